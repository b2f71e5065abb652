"""The `imsg` command: a thin Typer layer over the `imsg` library. Rules every command follows:

- data goes to stdout; everything else (progress, warnings, errors) to stderr with a
  prefix: `error:` then `hint:` lines, `warning:` for what does not stop the command;
- `--json` makes stdout machine-readable: one JSON object per line (NDJSON), and an
  error is also one JSON object on stderr: {"error": "<code>", "message": "..."};
- exit codes are stable (imsg.errors): 0 ok, 1 bug, 2 usage, 3 local state,
  4 relay unreachable, 5 relay refused, 6 security failure, 130 interrupted;
- modules import the client inside commands, so `imsg --help` stays fast;
- commands parse, call `imsg.Client`, and render: no protocol work here.

`imsg_cli.Client` (the library's `imsg.Client`) stays importable, deprecated, for one release.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        import warnings

        warnings.warn("imsg_cli.Client is deprecated: use `from imsg import Client`", DeprecationWarning, stacklevel=2)
        from imsg.client import Client

        return Client
    if name == "__version__":
        from imsg import __version__

        return __version__
    raise AttributeError(f"module 'imsg_cli' has no attribute {name!r}")
