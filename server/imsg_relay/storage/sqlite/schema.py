"""The SQLite schema of the relay (version SCHEMA_VERSION) and its one migration.

No sender column anywhere: an envelope row is (mailbox, message id, bytes, time). Handles
are kept only blinded, in `handles`; tokens only as SHA-256.
"""

from __future__ import annotations

import sqlite3

from imsg_relay.storage.base import SchemaTooNew

SCHEMA_VERSION = 7  # 2: provisioning channels; 3: attachment blobs; 4: sealed access, profiles;
# 5: handles table (OPRF-blinded), accounts without handle_hmac; 6: relay_meta (key fingerprint);
# 7: handle tags are VOPRF (mode 0x01) outputs, so rows tagged before are dropped

# Relay-wide facts: the key set's fingerprint (imsg_relay/keyset.py), never a key.
META_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id  TEXT PRIMARY KEY,
    account_key BLOB NOT NULL,
    device_list BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    device_id  INTEGER NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE IF NOT EXISTS signed_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id, kind)
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB,
    PRIMARY KEY (account_id, device_id, kind, key_id)
);
CREATE TABLE IF NOT EXISTS envelopes (
    seq         INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    device_id   INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    body        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (account_id, device_id, message_id)
);
CREATE INDEX IF NOT EXISTS envelopes_mailbox ON envelopes (account_id, device_id, seq);
CREATE INDEX IF NOT EXISTS envelopes_received ON envelopes (received_at);
-- Device linking: short-lived channels. Message rows carry no account, only the channel.
CREATE TABLE IF NOT EXISTS provisioning_channels (
    channel    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_channels_account ON provisioning_channels (account_id);
CREATE INDEX IF NOT EXISTS provisioning_channels_expiry ON provisioning_channels (expires_at);
CREATE TABLE IF NOT EXISTS provisioning_messages (
    seq     INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    box     TEXT NOT NULL CHECK (box IN ('new', 'existing')),
    body    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_messages_box ON provisioning_messages (channel, box, seq);
-- Attachment blobs: metadata only, the ciphertext is in the blob store. The account is the
-- uploader (quota, writes); downloads are recorded nowhere.
CREATE TABLE IF NOT EXISTS blobs (
    blob_id    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    size       INTEGER NOT NULL,
    part_size  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    complete   INTEGER NOT NULL DEFAULT 0,
    sha256     BLOB
);
CREATE INDEX IF NOT EXISTS blobs_account ON blobs (account_id, created_at);
CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_at);
CREATE TABLE IF NOT EXISTS blob_parts (
    blob_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
-- Sealed sender: the recipient's access-key verifier (SHA-256, never the key) and flag.
CREATE TABLE IF NOT EXISTS sealed_access (
    account_id      TEXT PRIMARY KEY,
    access_verifier BLOB,
    allow_anyone    INTEGER NOT NULL DEFAULT 0
);
-- Backups: one per account. The ciphertext is in the blob store under blob_id (no row in
-- blobs: a backup lives until the account deletes it). access_hash is SHA-256 of a token
-- derived from the recovery code: it lets a new device fetch the backup and enrol itself.
CREATE TABLE IF NOT EXISTS backups (
    account_id  TEXT PRIMARY KEY,
    access_hash BLOB NOT NULL UNIQUE,
    blob_id     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- Profiles: one ciphertext per account (name and photo under the profile key, which the
-- relay never holds), filed under an id derived from that key; replaced on each upload.
CREATE TABLE IF NOT EXISTS profiles (
    account_id TEXT PRIMARY KEY,
    key_id     BLOB NOT NULL,
    revision   INTEGER NOT NULL,
    body       BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
"""

# A row is (tag, account) with the tag's first 16 bits in `bucket`, so a discovery read is an
# index range scan that names no handle and no reader. Only "verified" or "unverified" rows
# that receive are served; "pending" rows wait for their code.
HANDLES_SCHEMA = """
CREATE TABLE IF NOT EXISTS handles (
    tag             BLOB NOT NULL,
    account_id      TEXT NOT NULL,
    bucket          INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'verified', 'unverified')),
    receiving       INTEGER NOT NULL DEFAULT 1,
    label           BLOB NOT NULL,
    record          BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    code_hash       BLOB,
    code_expires_at INTEGER NOT NULL DEFAULT 0,
    code_tries      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, tag)
);
CREATE INDEX IF NOT EXISTS handles_tag ON handles (tag);
CREATE INDEX IF NOT EXISTS handles_bucket ON handles (bucket) WHERE receiving = 1 AND state != 'pending';
"""


def migrate_accounts(conn: sqlite3.Connection) -> None:
    """Schema 3 kept each account's one handle as HMAC(secret, handle) in
    accounts.handle_hmac (UNIQUE, so it cannot be dropped in place): rebuild the table
    without it. An HMAC cannot become an OPRF tag, so those handles are added again by
    their owners (`imsg reachable add`)."""
    columns = [r[1] for r in conn.execute("PRAGMA table_info(accounts)")]
    if "handle_hmac" not in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "CREATE TABLE accounts_v4 (account_id TEXT PRIMARY KEY, account_key BLOB NOT NULL,"
        " device_list BLOB NOT NULL, created_at INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO accounts_v4 SELECT account_id, account_key, device_list, created_at FROM accounts")
    conn.execute("DROP TABLE accounts")
    conn.execute("ALTER TABLE accounts_v4 RENAME TO accounts")
    conn.execute("COMMIT")


def migrate_handles(conn: sqlite3.Connection) -> None:
    """Schemas 5 and 6 tagged handles with mode-0x00 OPRF outputs. The relay never kept the handles
    themselves, so the rows cannot be re-tagged in mode 0x01 (VOPRF): they are dropped, and
    their owners add them again (`imsg reachable add`). Schema 7 is the first with VOPRF tags."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'handles'").fetchone()
    if exists and version < 7:
        conn.execute("DELETE FROM handles")


def create(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema (idempotent); `conn` is in WAL mode and autocommit."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database schema is at version {current}, newer than this relay's {SCHEMA_VERSION}: "
            "upgrade the relay (never downgrade a migrated database)"
        )
    migrate_accounts(conn)
    migrate_handles(conn)
    conn.executescript(SCHEMA + HANDLES_SCHEMA + META_SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
