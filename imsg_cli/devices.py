"""`imsg device add|link|list|remove`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from imsg_cli.confirm import Yes, confirm
from imsg_cli.output import iso, local_time, print_qr
from imsg_cli.render import one_line
from imsg_cli.state import State

if TYPE_CHECKING:
    from imsg.client.results import DeviceInfo

app = typer.Typer(help="Link, list and remove this account's devices.", no_args_is_help=True)


@app.command("add")
def add(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option("--timeout", min=10, max=600, metavar="SECONDS", help="Seconds to wait for the new device.")
    ] = 300,
    history: Annotated[
        int,
        typer.Option("--history", min=0, max=10000, metavar="N", help="Send the new device this many recent messages."),
    ] = 0,
) -> None:
    """Show a one-time pairing code, then wait until a new device links with it.

    On the new device: imsg --home NEW --relay URL device link CODE"""
    state: State = ctx.obj
    out = state.out
    with state.client() as client:
        pairing = client.device_add_start()
        if out.json:
            out.record({"code": pairing.code, "expires_at": iso(pairing.expires_at)})
        else:
            out.line(pairing.code)
            print_qr(pairing.code)
            out.info(f"on the new device run:  imsg --relay {client.relay().base_url} device link {pairing.code}")
            out.info("waiting for it to link…")
        device = client.device_add_finish(pairing, timeout=timeout, history=history)
    if out.json:
        out.record(
            {
                "linked": True,
                "device_id": device.device_id,
                "name": device.name or None,
                "fingerprint": device.fingerprint,
            }
        )
    else:
        out.line(
            f"linked device {device.device_id}"
            + (f" ({one_line(device.name)})" if device.name else "")
            + f"  fingerprint {device.fingerprint}"
        )


@app.command("link")
def link(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="The code `imsg device add` shows on an existing device.")],
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="A name for this device (only your devices can read it).")
    ] = "",
) -> None:
    """Join an existing account from this (new) home."""
    import platform

    state: State = ctx.obj
    with state.client() as client:
        me = client.device_link(code, name or platform.node())
    from imsg_cli.account import print_whoami

    print_whoami(state, me)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """This account's devices, from its signed device list."""
    state: State = ctx.obj
    with state.client() as client:
        devices = client.devices()
    _print_devices(state, devices)


@app.command("remove")
def remove(
    ctx: typer.Context,
    device_id: Annotated[int, typer.Argument(min=1, help="The device's id (see imsg device list).")],
    yes: Yes = False,
) -> None:
    """Remove a device: it stops receiving at once, and the list is re-signed without it.
    Asks first (--yes: do not)."""
    state: State = ctx.obj
    with state.client() as client:
        known = {d.device_id: d for d in client.devices(refresh=False)}
        if device_id in known and not known[device_id].this_device:  # else the library's own error
            name = known[device_id].name
            confirm(f"remove device {device_id}{f' ({one_line(name)})' if name else ''} from this account?", yes)
        devices = client.device_remove(device_id)
    state.out.info(f"removed device {device_id}")
    _print_devices(state, devices)


def _print_devices(state: State, devices: list[DeviceInfo]) -> None:
    out = state.out
    if out.json:
        for d in devices:
            out.record(
                {
                    "device_id": d.device_id,
                    "name": d.name or None,
                    "fingerprint": d.fingerprint,
                    "added_at": iso(d.added_at),
                    "this_device": d.this_device,
                }
            )
        return
    out.table(
        ["id", "name", "fingerprint", "linked", ""],
        [
            [
                str(d.device_id),
                d.name or "-",
                d.fingerprint,
                local_time(d.added_at),
                "this device" if d.this_device else "",
            ]
            for d in devices
        ],
    )
