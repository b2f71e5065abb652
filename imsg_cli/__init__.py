"""imsg: an end-to-end encrypted messenger for the terminal.

`from imsg_cli import Client` gives scripts everything the `imsg` command does.
Imports are lazy so that `imsg --help` starts fast.
"""

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]


def __getattr__(name: str):
    if name == "Client":
        from imsg_cli.client import Client

        return Client
    raise AttributeError(f"module 'imsg_cli' has no attribute {name!r}")
