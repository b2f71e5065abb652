"""imsg: an end-to-end encrypted messenger for the terminal, as a library.

`from imsg import Client` gives scripts everything the `imsg` command does.
Imports are lazy so that `imsg --help` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imsg.client import Client

__version__ = "0.2.0"
__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> type[Client]:
    if name == "Client":
        from imsg.client import Client

        return Client
    raise AttributeError(f"module 'imsg' has no attribute {name!r}")
