"""The SQLite store of a home directory: one database file, WAL journal, FULL sync.

Durability matters here more than speed: the client acks an envelope at the relay only
after the transaction holding the advanced ratchet state and the message has committed,
and it commits a sending ratchet step before the envelope leaves (a crash must never
make it reuse a (ratchet key, n) pair, SECURITY-TESTS 21). `secure_delete` overwrites
deleted content. Transactions use BEGIN IMMEDIATE so two `imsg` processes on one home
(a `watch` and a `send`) serialise their ratchet updates instead of racing.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, SignedPreKey
from imsg.protocol.session import Address
from imsg.protocol.stores import (
    CachedProfile,
    Contact,
    Conversation,
    HeldMessage,
    LocalAccount,
    OutgoingBatch,
    OwnHandle,
    StoredAttachment,
    StoredMessage,
    Upload,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS account (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    account_id TEXT NOT NULL, handle TEXT NOT NULL, name TEXT NOT NULL,
    account_public BLOB NOT NULL, account_private BLOB,
    device_id INTEGER NOT NULL, identity_private BLOB NOT NULL, signing_private BLOB NOT NULL,
    device_list BLOB NOT NULL, relay_url TEXT NOT NULL, token TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS prekeys (
    kind TEXT NOT NULL CHECK (kind IN ('signed', 'kem', 'one_time')),
    key_id INTEGER NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (kind, key_id)
);
CREATE TABLE IF NOT EXISTS sessions (
    account_id TEXT NOT NULL, device_id INTEGER NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE IF NOT EXISTS contacts (
    account_id TEXT PRIMARY KEY, handle TEXT NOT NULL, account_key BLOB NOT NULL,
    device_list BLOB NOT NULL, verified INTEGER NOT NULL DEFAULT 0, first_seen INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'changed', 'replaced'))
);
CREATE INDEX IF NOT EXISTS contacts_handle ON contacts (handle);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY, peer_account_id TEXT NOT NULL, peer_handle TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    sender_handle TEXT NOT NULL, recipient_handle TEXT NOT NULL, text TEXT NOT NULL,
    sent_at INTEGER NOT NULL, stored_at INTEGER NOT NULL, sender_device INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_peer ON messages (peer_account_id, sent_at);
CREATE INDEX IF NOT EXISTS messages_unshown ON messages (shown) WHERE shown = 0;
-- retention: age is the earlier of the sender's and our clock (a sender can make its
-- message look older, never younger than it is here)
CREATE INDEX IF NOT EXISTS messages_age ON messages (min(sent_at, stored_at));
CREATE TABLE IF NOT EXISTS held (
    message_id TEXT PRIMARY KEY, handle TEXT NOT NULL, text TEXT NOT NULL, created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    message_id TEXT NOT NULL, idx INTEGER NOT NULL, blob_id TEXT NOT NULL, key BLOB NOT NULL,
    digest BLOB NOT NULL, size INTEGER NOT NULL, name TEXT NOT NULL, content_type TEXT NOT NULL,
    saved_path TEXT NOT NULL DEFAULT '', PRIMARY KEY (message_id, idx)
);
CREATE TABLE IF NOT EXISTS uploads (
    blob_id TEXT PRIMARY KEY, path TEXT NOT NULL, plain_size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    key BLOB NOT NULL, size INTEGER NOT NULL, part_size INTEGER NOT NULL, name TEXT NOT NULL,
    content_type TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    digest BLOB NOT NULL, complete INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_source ON uploads (path, plain_size, mtime_ns);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS own_handles (
    handle TEXT PRIMARY KEY, handle_id TEXT NOT NULL, state TEXT NOT NULL, receiving INTEGER NOT NULL,
    start_from INTEGER NOT NULL, added_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    account_id TEXT PRIMARY KEY, revision INTEGER NOT NULL, name TEXT NOT NULL, photo BLOB NOT NULL,
    fetched_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT NOT NULL, account_id TEXT NOT NULL, envelopes BLOB NOT NULL,
    created_at INTEGER NOT NULL, PRIMARY KEY (message_id, account_id)
);
"""

# (table, column, declaration) added after the table's first release; see _migrate.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("account", "profile_key", "BLOB NOT NULL DEFAULT x''"),
    ("contacts", "profile_key", "BLOB NOT NULL DEFAULT x''"),
    ("contacts", "in_contacts", "INTEGER NOT NULL DEFAULT 0"),
    ("contacts", "nickname", "TEXT NOT NULL DEFAULT ''"),
    ("contacts", "profile_revision", "INTEGER NOT NULL DEFAULT 0"),
    ("contacts", "share_profile", "TEXT NOT NULL DEFAULT ''"),
    ("contacts", "shared_profile_key", "BLOB NOT NULL DEFAULT x''"),
    ("contacts", "access_key", "BLOB NOT NULL DEFAULT x''"),
    ("outbox", "envelope_id", "TEXT NOT NULL DEFAULT ''"),
    ("outbox", "not_before", "INTEGER NOT NULL DEFAULT 0"),
)


# A result row: sqlite3 (and sqlcipher3) hand back plain tuples of column values.
Row = tuple[Any, ...]


class SQLiteStore:
    def __init__(self, path: str | os.PathLike[str], *, key: bytes | None = None, lock_fd: int | None = None):
        """`key`: the 32-byte storage key of a passcode-protected home (SQLCipher; see
        imsg/store/vault.py, which opens homes). `lock_fd`: the home's lock, released on close."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not self.path.exists()
        if fresh:  # create the file 0600 before SQLite writes anything into it
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        if key is None:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        else:
            import sqlcipher3

            self._db = sqlcipher3.connect(str(self.path), isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA cipher_log_level = NONE")
            self._db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        self._lock_fd = lock_fd
        # Sorts and temporary indexes in memory: a temp file would hold plaintext rows.
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        self._migrate()

    def _migrate(self) -> None:
        # executescript commits implicitly, so run it outside our transaction wrapper.
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        # Columns added after a table was first created: each feature lists its own here, so
        # an older home gains them on open, and two features never fight over a version number.
        for table, column, decl in _ADDED_COLUMNS:
            self._ensure_column(table, column, decl)

    def _ensure_column(self, table: str, column: str, decl: str) -> None:
        names = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        if column not in names:
            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def checkpoint(self) -> None:
        """Move the WAL into the database and truncate it: after a deletion, the old page
        images (secure_delete zeroes only the new ones) leave the WAL file."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def messages_older_than(self, cutoff_ms: int, limit: int) -> list[str]:
        rows = self._db.execute(
            "SELECT message_id FROM messages WHERE min(sent_at, stored_at) < ? LIMIT ?", (cutoff_ms, limit)
        )
        return [r[0] for r in rows]

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> Row | None:
        row: Row | None = self._db.execute(sql, args).fetchone()
        return row

    # accounts
    def load_account(self) -> LocalAccount | None:
        row = self._one(
            "SELECT account_id, handle, name, account_public, account_private, device_id, "
            "identity_private, signing_private, device_list, relay_url, token, created_at, profile_key "
            "FROM account WHERE id = 1"
        )
        return LocalAccount(*row) if row else None

    def save_account(self, a: LocalAccount) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO account (id, account_id, handle, name, account_public, account_private, "
            "device_id, identity_private, signing_private, device_list, relay_url, token, created_at, "
            "profile_key) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a.account_id,
                a.handle,
                a.name,
                a.account_public,
                a.account_private,
                a.device_id,
                a.identity_private,
                a.signing_private,
                a.device_list,
                a.relay_url,
                a.token,
                a.created_at,
                a.profile_key,
            ),
        )

    # cached profiles
    def cached_profile(self, account_id: str) -> CachedProfile | None:
        row = self._one(
            "SELECT account_id, revision, name, photo, fetched_at FROM profiles WHERE account_id = ?", (account_id,)
        )
        return CachedProfile(*row) if row else None

    def save_cached_profile(self, p: CachedProfile) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?)",
            (p.account_id, p.revision, p.name, p.photo, p.fetched_at),
        )

    # settings
    def get_setting(self, key: str) -> str | None:
        row = self._one("SELECT value FROM settings WHERE key = ?", (key,))
        return row[0] if row else None

    def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

    def settings(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM settings ORDER BY key").fetchall())

    # own handles
    def own_handles(self) -> list[OwnHandle]:
        return [
            OwnHandle(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5])
            for r in self._db.execute(
                "SELECT handle, handle_id, state, receiving, start_from, added_at FROM own_handles "
                "ORDER BY added_at, handle"
            )
        ]

    def save_own_handle(self, h: OwnHandle) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO own_handles VALUES (?, ?, ?, ?, ?, ?)",
            (h.handle, h.handle_id, h.state, int(h.receiving), int(h.start_from), h.added_at),
        )

    def remove_own_handle(self, handle: str) -> None:
        self._db.execute("DELETE FROM own_handles WHERE handle = ?", (handle,))

    # prekeys
    def _get_prekey(self, kind: str, key_id: int) -> bytes | None:
        row = self._one("SELECT record FROM prekeys WHERE kind = ? AND key_id = ?", (kind, key_id))
        return row[0] if row else None

    def _put_prekey(self, kind: str, key_id: int, record: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO prekeys VALUES (?, ?, ?)", (kind, key_id, record))

    def _del_prekey(self, kind: str, key_id: int) -> None:
        self._db.execute("DELETE FROM prekeys WHERE kind = ? AND key_id = ?", (kind, key_id))

    def get_signed_prekey(self, key_id: int) -> SignedPreKey | None:
        rec = self._get_prekey("signed", key_id)
        return SignedPreKey.decode(rec) if rec else None

    def save_signed_prekey(self, key: SignedPreKey) -> None:
        self._put_prekey("signed", key.key_id, key.encode())

    def signed_prekeys(self) -> list[SignedPreKey]:
        rows = self._db.execute("SELECT record FROM prekeys WHERE kind = 'signed' ORDER BY key_id")
        return [SignedPreKey.decode(r[0]) for r in rows]

    def remove_signed_prekey(self, key_id: int) -> None:
        self._del_prekey("signed", key_id)

    def get_kem_prekey(self, key_id: int) -> KemPreKey | None:
        rec = self._get_prekey("kem", key_id)
        return KemPreKey.decode(rec) if rec else None

    def save_kem_prekey(self, key: KemPreKey) -> None:
        self._put_prekey("kem", key.key_id, key.encode())

    def remove_kem_prekey(self, key_id: int) -> None:
        self._del_prekey("kem", key_id)

    def kem_prekey_ids(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT key_id FROM prekeys WHERE kind = 'kem' ORDER BY key_id")]

    def get_one_time_prekey(self, key_id: int) -> OneTimePreKey | None:
        rec = self._get_prekey("one_time", key_id)
        return OneTimePreKey(key_id, rec[:32], rec[32:]) if rec else None

    def save_one_time_prekey(self, key: OneTimePreKey) -> None:
        self._put_prekey("one_time", key.key_id, key.private + key.public)

    def remove_one_time_prekey(self, key_id: int) -> None:
        self._del_prekey("one_time", key_id)

    def next_prekey_id(self) -> int:
        with self.transaction():
            row = self._one("SELECT value FROM meta WHERE key = 'next_prekey_id'")
            key_id = int(row[0]) if row else 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_prekey_id', ?)", (str(key_id + 1),))
        return key_id

    # sessions
    def load_session(self, address: Address) -> bytes | None:
        row = self._one(
            "SELECT record FROM sessions WHERE account_id = ? AND device_id = ?",
            (address.account_id, address.device_id),
        )
        return row[0] if row else None

    def save_session(self, address: Address, record: bytes) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
            (address.account_id, address.device_id, record),
        )

    def delete_session(self, address: Address) -> None:
        self._db.execute(
            "DELETE FROM sessions WHERE account_id = ? AND device_id = ?",
            (address.account_id, address.device_id),
        )

    def session_addresses(self) -> list[Address]:
        rows = self._db.execute("SELECT account_id, device_id FROM sessions ORDER BY account_id, device_id")
        return [Address(r[0], r[1]) for r in rows]

    # contacts
    _CONTACT = (
        "SELECT account_id, handle, account_key, device_list, verified, first_seen, status, profile_key, "
        "in_contacts, nickname, profile_revision, share_profile, shared_profile_key, access_key FROM contacts"
    )

    @staticmethod
    def _contact(row: Row) -> Contact:
        return Contact(
            row[0],
            row[1],
            row[2],
            row[3],
            bool(row[4]),
            row[5],
            row[6],
            row[7],
            bool(row[8]),
            row[9],
            row[10],
            row[11],
            row[12],
            row[13],
        )

    def get_contact(self, account_id: str) -> Contact | None:
        row = self._one(self._CONTACT + " WHERE account_id = ?", (account_id,))
        return None if row is None else self._contact(row)

    def contact_by_handle(self, handle: str) -> Contact | None:
        row = self._one(
            self._CONTACT + " WHERE handle = ? ORDER BY CASE status WHEN 'ok' THEN 0 WHEN 'changed' THEN 1 "
            "ELSE 2 END, first_seen DESC LIMIT 1",
            (handle,),
        )
        return None if row is None else self._contact(row)

    def reassign_messages(self, old_account_id: str, new_account_id: str) -> None:
        self._db.execute(
            "UPDATE messages SET peer_account_id = ? WHERE peer_account_id = ?", (new_account_id, old_account_id)
        )

    def save_contact(self, c: Contact) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO contacts (account_id, handle, account_key, device_list, verified, "
            "first_seen, status, profile_key, in_contacts, nickname, profile_revision, share_profile, "
            "shared_profile_key, access_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                c.account_id,
                c.handle,
                c.account_key,
                c.device_list,
                int(c.verified),
                c.first_seen,
                c.status,
                c.profile_key,
                int(c.in_contacts),
                c.nickname,
                c.profile_revision,
                c.share_profile,
                c.shared_profile_key,
                c.access_key,
            ),
        )

    def contacts(self) -> list[Contact]:
        return [self._contact(r) for r in self._db.execute(self._CONTACT + " ORDER BY handle")]

    # messages
    _MESSAGE = (
        "SELECT message_id, peer_account_id, peer_handle, direction, sender_handle, "
        "recipient_handle, text, sent_at, stored_at, sender_device FROM messages"
    )

    def add_message(self, m: StoredMessage) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.message_id,
                m.peer_account_id,
                m.peer_handle,
                m.direction,
                m.sender_handle,
                m.recipient_handle,
                m.text,
                m.sent_at,
                m.stored_at,
                m.sender_device,
                int(m.direction == "out"),
            ),
        )
        return cur.rowcount == 1

    def has_message(self, message_id: str) -> bool:
        return self._one("SELECT 1 FROM messages WHERE message_id = ?", (message_id,)) is not None

    def history(self, peer_account_id: str, limit: int) -> list[StoredMessage]:
        rows = self._db.execute(
            self._MESSAGE + " WHERE peer_account_id = ? ORDER BY sent_at DESC, stored_at DESC, message_id DESC LIMIT ?",
            (peer_account_id, max(limit, 0)),
        ).fetchall()
        return [StoredMessage(*r) for r in reversed(rows)]

    def conversations(self) -> list[Conversation]:
        rows = self._db.execute(
            "SELECT m.peer_account_id, m.peer_handle, m.text, m.sent_at, c.n FROM messages m "
            "JOIN (SELECT peer_account_id, MAX(sent_at) AS last, COUNT(*) AS n FROM messages "
            "      GROUP BY peer_account_id) c "
            "ON m.peer_account_id = c.peer_account_id AND m.sent_at = c.last "
            "GROUP BY m.peer_account_id ORDER BY m.sent_at DESC"
        ).fetchall()
        return [Conversation(*r) for r in rows]

    def unshown(self) -> list[StoredMessage]:
        rows = self._db.execute(self._MESSAGE + " WHERE shown = 0 ORDER BY stored_at, sent_at")
        return [StoredMessage(*r) for r in rows]

    def mark_shown(self, message_ids: list[str]) -> None:
        self._db.executemany("UPDATE messages SET shown = 1 WHERE message_id = ?", [(i,) for i in message_ids])

    # outbox
    def add_outgoing(self, b: OutgoingBatch) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO outbox (message_id, account_id, envelopes, created_at, envelope_id, not_before)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (b.message_id, b.account_id, _pack_envelopes(b.envelopes), b.created_at, b.envelope_id, b.not_before),
        )

    def outgoing(self) -> list[OutgoingBatch]:
        rows = self._db.execute(
            "SELECT message_id, account_id, envelopes, created_at, envelope_id, not_before FROM outbox"
            " ORDER BY created_at"
        )
        return [OutgoingBatch(r[0], r[1], _unpack_envelopes(r[2]), r[3], r[4], r[5]) for r in rows]

    def remove_outgoing(self, message_id: str, account_id: str) -> None:
        self._db.execute("DELETE FROM outbox WHERE message_id = ? AND account_id = ?", (message_id, account_id))

    # held
    def hold_message(self, m: HeldMessage) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?)", (m.message_id, m.handle, m.text, m.created_at)
        )

    def held_messages(self, handle: str | None = None) -> list[HeldMessage]:
        if handle is None:
            rows = self._db.execute("SELECT * FROM held ORDER BY created_at")
        else:
            rows = self._db.execute("SELECT * FROM held WHERE handle = ? ORDER BY created_at", (handle,))
        return [HeldMessage(*r) for r in rows]

    def release_held(self, message_id: str) -> None:
        self._db.execute("DELETE FROM held WHERE message_id = ?", (message_id,))

    # attachments and uploads
    def add_attachments(self, attachments: list[StoredAttachment]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (a.message_id, a.index, a.blob_id, a.key, a.digest, a.size, a.name, a.content_type, a.saved_path)
                for a in attachments
            ],
        )

    def attachments(self, message_id: str) -> list[StoredAttachment]:
        rows = self._db.execute("SELECT * FROM attachments WHERE message_id = ? ORDER BY idx", (message_id,))
        return [StoredAttachment(*r) for r in rows]

    def set_saved_path(self, message_id: str, index: int, path: str) -> None:
        self._db.execute(
            "UPDATE attachments SET saved_path = ? WHERE message_id = ? AND idx = ?", (path, message_id, index)
        )

    def save_upload(self, u: Upload) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                u.blob_id,
                u.path,
                u.plain_size,
                u.mtime_ns,
                u.key,
                u.size,
                u.part_size,
                u.name,
                u.content_type,
                u.created_at,
                u.expires_at,
                u.digest,
                int(u.complete),
            ),
        )

    @staticmethod
    def _upload(row: Row) -> Upload:
        # the columns in table order (SELECT *), as save_upload writes them
        blob_id, path, plain_size, mtime_ns, key, size, part_size, name, ctype, created, expires, digest, done = row
        return Upload(
            blob_id, path, plain_size, mtime_ns, key, size, part_size, name, ctype, created, expires, digest, bool(done)
        )

    def get_upload(self, blob_id: str) -> Upload | None:
        row = self._one("SELECT * FROM uploads WHERE blob_id = ?", (blob_id,))
        return None if row is None else self._upload(row)

    def find_upload(self, path: str, plain_size: int, mtime_ns: int) -> Upload | None:
        row = self._one(
            "SELECT * FROM uploads WHERE path = ? AND plain_size = ? AND mtime_ns = ? ORDER BY created_at DESC LIMIT 1",
            (path, plain_size, mtime_ns),
        )
        return None if row is None else self._upload(row)

    def uploads(self) -> list[Upload]:
        return [self._upload(r) for r in self._db.execute("SELECT * FROM uploads ORDER BY created_at")]

    def remove_upload(self, blob_id: str) -> None:
        self._db.execute("DELETE FROM uploads WHERE blob_id = ?", (blob_id,))

    def delete_messages(self, message_ids: list[str]) -> list[str]:
        paths = []
        for mid in message_ids:
            paths += [
                r[0]
                for r in self._db.execute(
                    "SELECT saved_path FROM attachments WHERE message_id = ? AND saved_path != ''", (mid,)
                )
            ]
            self._db.execute("DELETE FROM attachments WHERE message_id = ?", (mid,))
            self._db.execute("DELETE FROM messages WHERE message_id = ?", (mid,))
        return paths


def _pack_envelopes(envelopes: tuple[tuple[int, bytes], ...]) -> bytes:
    from imsg.protocol.encoding import Writer

    w = Writer().u16(len(envelopes))
    for device_id, body in envelopes:
        w.u32(device_id).var(body)
    return w.bytes()


def _unpack_envelopes(data: bytes) -> tuple[tuple[int, bytes], ...]:
    from imsg.protocol.encoding import Reader

    r = Reader(data)
    return tuple((r.u32(), r.var()) for _ in range(r.u16()))
