"""What the tests share: relay launchers (`relays`), the `imsg` command runner (`cli`).

Importable as `support.*` because pytest puts tests/ on sys.path (rootdir conftest).
The protocol-level two-party helper stays with the unit tests (tests/unit/protocol_helpers.py).
"""
