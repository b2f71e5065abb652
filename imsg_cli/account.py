"""`imsg init`, `imsg whoami`."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from imsg_cli.render import one_line
from imsg_cli.state import State

if TYPE_CHECKING:
    from imsg.client.results import WhoAmI


def init(
    ctx: typer.Context,
    handle: Annotated[str, typer.Argument(help="Your e-mail address or E.164 phone number.")],
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Your display name (kept on this device).")] = "",
) -> None:
    """Create an account: account key, this device's keys and prekeys; register with the relay."""
    state: State = ctx.obj
    with state.client() as client:
        me = client.init(handle, name)
        pending = [h for h in client.reachable_list(refresh=False) if h.state == "pending"]
        unsent = [p for p in client.problems if p.code == "code_not_sent"]
    print_whoami(state, me)
    for p in unsent:
        state.out.warning(p.code, p.message)
    for h in pending if not unsent else ():
        state.out.info(f"a code was sent to {h.handle}; confirm it with: imsg reachable verify {h.handle} CODE")


def whoami(ctx: typer.Context) -> None:
    """Show this home's account, handle, device and relay. Asks the relay for the current
    device list (so a device removed elsewhere says so); offline, shows what it holds."""
    from imsg.errors import RelayRefusedError, RelayUnavailableError

    state: State = ctx.obj
    removed = False
    with state.client() as client:
        me = client.whoami()
        try:
            listed = [d.device_id for d in client.devices(refresh=True)]
            removed = me.device_id not in listed
        except RelayRefusedError as exc:
            removed = exc.status == 401  # this device's credential is revoked: it was removed
            listed = [d.device_id for d in client.devices(refresh=False)]  # the others, as last known
        except RelayUnavailableError:
            listed = [d.device_id for d in client.devices(refresh=False)]
            state.out.info("(the relay is unreachable: the device list is this home's copy)")
    devices = len([d for d in listed if d != me.device_id]) if removed else len(listed)
    print_whoami(state, replace(me, devices=devices), removed=removed)


def print_whoami(state: State, me: WhoAmI, *, removed: bool = False) -> None:
    out = state.out
    if out.json:
        out.record(
            {
                "account_id": me.account_id,
                "handle": me.handle,
                "name": me.name or None,
                "device_id": me.device_id,
                "devices": me.devices,
                "relay": me.relay,
                "fingerprint": me.fingerprint,
                "removed": removed,
            }
        )
        return
    out.line(f"handle       {one_line(me.handle)}" + (f" ({one_line(me.name)})" if me.name else ""))
    out.line(f"account      {me.account_id}")
    if removed:
        out.line(f"device       {me.device_id}, REMOVED from this account (it can no longer send or receive)")
    else:
        out.line(f"device       {me.device_id} of {me.devices}")
    out.line(f"relay        {me.relay}")
    out.line(f"fingerprint  {me.fingerprint}")
