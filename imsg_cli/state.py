"""What the global options decide, passed to every command through the Typer context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imsg_cli.output import Output

if TYPE_CHECKING:
    from pathlib import Path

    from imsg.client import Client
    from imsg.store.vault import KeySource


@dataclass
class State:
    home: str | None
    relay: str | None
    json: bool
    insecure: bool
    passcode_file: str | None = None
    proxy: str | None = None

    @property
    def out(self) -> Output:
        return Output(self.json)

    def keys(self) -> KeySource:
        """Where this command may get a locked home's passcode (imsg.store.vault.KeySource)."""
        from imsg.store.vault import KeySource

        return KeySource.from_environment(self.passcode_file)

    def home_path(self) -> Path:
        from pathlib import Path

        from imsg.client import default_home

        return Path(self.home).expanduser() if self.home else default_home()

    def client(self, *, retention: bool = True) -> Client:
        from imsg.client import Client

        return Client.open(
            self.home,
            self.relay,
            allow_insecure=self.insecure,
            keys=self.keys(),
            retention=retention,
            proxy=self.proxy,
        )
