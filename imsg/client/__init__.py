"""The client library: `Client`, a facade (imsg/client/facade.py) over services that share
one context (imsg/client/context.py); what it returns is in imsg/client/results.py."""

from imsg.client.facade import Client, default_home

__all__ = ["Client", "default_home"]
