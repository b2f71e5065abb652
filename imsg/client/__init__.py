"""`Client`: the library's facade (see imsg/client/core.py)."""

from imsg.client.core import Client

__all__ = ["Client"]
