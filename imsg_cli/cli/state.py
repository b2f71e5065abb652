"""What the global options decide, passed to every command through the Typer context."""

from __future__ import annotations

from dataclasses import dataclass

from imsg_cli.cli.output import Output


@dataclass
class State:
    home: str | None
    relay: str | None
    json: bool
    insecure: bool

    @property
    def out(self) -> Output:
        return Output(self.json)

    def client(self):
        from imsg_cli.client import Client

        return Client.open(self.home, self.relay, allow_insecure=self.insecure)
