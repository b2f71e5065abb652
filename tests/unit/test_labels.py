"""Every domain-separation label is in docs/PROTOCOL.md's label table, word for word, and
every row of the table is in the code (STYLE.md: one named constant per label, appearing in
the spec as written).

The labels are found by reading the source, not by trusting a list: every `b"imsg/..."`
bytes literal in the client (`imsg/`, `imsg_cli/`) and in the relay (`server/imsg_relay/`),
so a new label anywhere fails here until the table has it. The client defines all of its
labels in `imsg/crypto/labels.py`; the relay (which imports nothing of `imsg`) defines its
own where it uses them, and is read here through its modules' attributes.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from imsg.crypto import labels

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "PROTOCOL.md"
HOME = "imsg/crypto/labels.py"  # the client's one module of labels
NONE, INLINE = "—", "(inline)"


@dataclass(frozen=True)
class Found:
    """One label literal in the source."""

    path: str  # relative to the repository
    module: str  # its dotted module name
    name: str | None  # the module-level constant it is bound to; None for an inline literal
    value: bytes


@dataclass(frozen=True)
class Row:
    client: str | None  # constant in imsg/crypto/labels.py, or None (relay only)
    relay: str | None  # the relay's constant, INLINE for an unnamed literal, or None (client only)
    value: bytes


def _scan(package_root: Path, base: Path) -> list[Found]:
    """Every bytes literal starting with b"imsg/" under `package_root`, with the module-level
    name it is assigned to, if any. `base` is the directory the module names start from."""
    found = []
    for path in sorted(package_root.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found += _scan_source(path.read_text(), str(path.relative_to(ROOT)), module)
    return found


def _scan_source(source: str, path: str = "<test>", module: str = "<test>") -> list[Found]:
    tree = ast.parse(source, filename=path)
    named: dict[int, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            named[id(node.value)] = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            named[id(node.value)] = node.target.id
    return [
        Found(path, module, named.get(id(node)), node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes) and node.value.startswith(b"imsg/")
    ]


CLIENT = _scan(ROOT / "imsg", ROOT) + _scan(ROOT / "imsg_cli", ROOT)
RELAY = _scan(ROOT / "server" / "imsg_relay", ROOT / "server")


def _cell(text: str) -> str | None:
    text = text.strip()
    if text == NONE:
        return None
    m = re.fullmatch(r"`([^`]+)`", text)
    return m.group(1) if m else text


def _table() -> list[Row]:
    """The rows of the table under "### Labels" in docs/PROTOCOL.md."""
    section = SPEC.read_text().split("\n### Labels\n", 1)[1].split("\n### ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert lines[0].split("|")[1:-1] == [" constant ", " relay constant ", " value ", " used in "], lines[0]
    rows = []
    for line in lines[2:]:  # after the header and its --- line
        cells = line.split("|")[1:-1]
        assert len(cells) == 4, line
        client, relay, value = (_cell(c) for c in cells[:3])
        assert value is not None and cells[2].strip().startswith("`"), line
        rows.append(Row(client, relay, value.encode("ascii")))
    return rows


TABLE = _table()
BY_VALUE = {row.value: row for row in TABLE}


def test_the_scan_finds_labels_on_both_sides():
    # a scan that found nothing would pass everything below
    assert len({f.value for f in CLIENT}) >= 30 and len({f.value for f in RELAY}) >= 8
    # inline literals (bound to no name) are found too
    inline = _scan_source('x = hash(b"imsg/v1/some-inline-label" + y)\nLABEL_N = b"imsg/v1/named"\n')
    assert sorted((f.value, f.name or "") for f in inline) == [
        (b"imsg/v1/named", "LABEL_N"),
        (b"imsg/v1/some-inline-label", ""),
    ]


def test_the_table_has_one_row_per_label_and_one_label_per_name():
    assert len(BY_VALUE) == len(TABLE), "a value appears in two rows"
    for side in ("client", "relay"):
        names = [getattr(row, side) for row in TABLE if getattr(row, side) not in (None, INLINE)]
        assert len(names) == len(set(names)), f"a {side} constant appears in two rows"
    for row in TABLE:
        assert row.client or row.relay, row
        assert row.client is None or row.client.startswith("LABEL_"), row  # STYLE.md: LABEL_* = b"imsg/v1/..."


def test_client_labels_are_defined_in_one_module_only():
    elsewhere = [f for f in CLIENT if f.path != HOME]
    assert elsewhere == [], f"client labels belong in {HOME} (and in docs/PROTOCOL.md's table)"
    unnamed = [f for f in CLIENT if f.name is None or not f.name.startswith("LABEL_")]
    assert unnamed == [], "each label is one LABEL_* constant"
    values = [f.value for f in CLIENT]
    assert len(values) == len(set(values)), "one constant per label"


@pytest.mark.parametrize("found", CLIENT, ids=lambda f: f.name or f.value.decode())
def test_every_client_label_is_in_the_table_under_its_name(found: Found):
    row = BY_VALUE.get(found.value)
    assert row is not None, f"{found.value!r} ({found.name}) is missing from docs/PROTOCOL.md's label table"
    assert row.client == found.name, f"the table names {found.value!r} {row.client}, the code {found.name}"
    assert getattr(importlib.import_module(found.module), found.name) == found.value


@pytest.mark.parametrize("found", RELAY, ids=lambda f: f"{f.module}.{f.name or 'inline'}")
def test_every_relay_label_is_in_the_table_under_its_name(found: Found):
    row = BY_VALUE.get(found.value)
    where = f"{found.value!r} in {found.path}"
    assert row is not None, f"{where} is missing from docs/PROTOCOL.md's label table"
    if found.name is None:
        assert row.relay is not None, f"{where}: the table says the relay does not use it"
    else:
        assert row.relay == found.name, f"{where}: the table names it {row.relay}, the relay {found.name}"
        assert getattr(importlib.import_module(found.module), found.name) == found.value  # the relay's real value


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.value.decode())
def test_every_table_row_is_in_the_code(row: Row):
    if row.client is None:
        assert row.value not in {f.value for f in CLIENT}, f"the client uses {row.value!r}: name it in the table"
    else:
        assert getattr(labels, row.client, None) == row.value, f"imsg.crypto.labels.{row.client} != {row.value!r}"
    on_relay = [f for f in RELAY if f.value == row.value]
    if row.relay is None:
        assert on_relay == [], f"the relay uses {row.value!r} ({on_relay[0].path}): name it in the table"
    elif row.relay == INLINE:
        assert on_relay and all(f.name is None for f in on_relay), f"no inline {row.value!r} in the relay"
    else:
        assert any(f.name == row.relay for f in on_relay), f"the relay has no {row.relay} = {row.value!r}"


def test_labels_both_sides_compute_have_the_same_bytes():
    client = {f.name: f.value for f in CLIENT}
    relay = {}
    for f in RELAY:
        if f.name is not None:
            relay[f.name] = getattr(importlib.import_module(f.module), f.name)
    shared = [row for row in TABLE if row.client and row.relay and row.relay != INLINE]
    assert len(shared) >= 5  # account id, restore-device, sender certificate, relay key, discovery
    for row in shared:
        assert getattr(labels, row.client) == relay[row.relay] == row.value, row
    # a constant both sides define under one name means one label, whatever the table says
    for name in client.keys() & relay.keys():
        assert client[name] == relay[name], (name, client[name], relay[name])


def test_labels_are_ascii_versioned_and_signature_contexts_are_prefix_free():
    for row in TABLE:
        assert row.value.isascii() and row.value.startswith(b"imsg/v1/"), row
    # Sig is Ed25519 over ctx || m: no context may be a prefix of another (test_kat_ed25519.py)
    contexts = [row.value for row in TABLE if row.value.startswith(b"imsg/v1/sig/")]
    assert len(contexts) >= 6
    for a in contexts:
        for b in contexts:
            assert a == b or not b.startswith(a), (a, b)
