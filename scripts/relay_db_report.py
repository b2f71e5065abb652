#!/usr/bin/env python3
"""Show what a relay's SQLite database holds, and check it holds none of the given
strings (plaintexts, handles, names) in any table, any column, any encoding we know of.

    relay_db_report.py RELAY_DB [--absent TEXT ...]

Exit status 1 if any TEXT is found: used by scripts/demo and the end-to-end tests.
"""

from __future__ import annotations

import argparse
import base64
import sqlite3
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--absent", action="append", default=[], help="text that must not appear")
    args = ap.parse_args()
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    needles = []
    for text in args.absent:
        raw = text.encode()
        needles += [raw, raw.hex().encode(), base64.b64encode(raw)]
    found = []
    print("relay database:", args.db)
    for table in tables:
        rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
        cols = [d[0] for d in db.execute(f'SELECT * FROM "{table}" LIMIT 0').description]
        print(f"  {table:<20} {len(rows):>5} rows   columns: {', '.join(cols)}")
        for row in rows:
            for col, value in zip(cols, row, strict=True):
                data = value if isinstance(value, bytes) else str(value).encode()
                for needle, text in zip(needles, [t for t in args.absent for _ in range(3)], strict=True):
                    if needle and needle in data:
                        found.append((table, col, text))
        blobs = [
            (c, v) for row in rows[:1] for c, v in zip(cols, row, strict=True) if isinstance(v, bytes) and len(v) > 64
        ]
        for col, value in blobs[:1]:
            print(f"      e.g. {col}: {value[:24].hex()}… ({len(value)} bytes)")
    # The raw file too: WAL and freed pages included.
    for path in (args.db, args.db + "-wal"):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            continue
        for text in args.absent:
            if text.encode() in data:
                found.append((path, "(file bytes)", text))
    if found:
        for where, col, text in found:
            print(f"FOUND {text!r} in {where}.{col}", file=sys.stderr)
        return 1
    if args.absent:
        print(f"  none of {len(args.absent)} plaintext strings appear anywhere in the database files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
