"""The PostgreSQL schema of the relay: the same tables as SQLite (storage/sqlite/schema.py),
no sender column, handles and tokens only as digests. `create` is safe to run from several
workers at once: it holds an advisory lock while it creates.
"""

from __future__ import annotations

from psycopg import AsyncConnection

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id  TEXT PRIMARY KEY,
    account_key BYTEA NOT NULL,
    device_list BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    token_hash BYTEA NOT NULL CONSTRAINT devices_token_unique UNIQUE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE IF NOT EXISTS signed_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    signature  BYTEA NOT NULL,
    PRIMARY KEY (account_id, device_id, kind)
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    signature  BYTEA,
    PRIMARY KEY (account_id, device_id, kind, key_id)
);
CREATE TABLE IF NOT EXISTS envelopes (
    seq         BIGSERIAL PRIMARY KEY,
    account_id  TEXT NOT NULL,
    device_id   INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    body        BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (account_id, device_id, message_id)
);
CREATE INDEX IF NOT EXISTS envelopes_mailbox ON envelopes (account_id, device_id, seq);
CREATE INDEX IF NOT EXISTS envelopes_received ON envelopes (received_at);
CREATE TABLE IF NOT EXISTS provisioning_channels (
    channel    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_channels_account ON provisioning_channels (account_id);
CREATE INDEX IF NOT EXISTS provisioning_channels_expiry ON provisioning_channels (expires_at);
CREATE TABLE IF NOT EXISTS provisioning_messages (
    seq     BIGSERIAL PRIMARY KEY,
    channel TEXT NOT NULL,
    box     TEXT NOT NULL CHECK (box IN ('new', 'existing')),
    body    BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_messages_box ON provisioning_messages (channel, box, seq);
CREATE TABLE IF NOT EXISTS blobs (
    blob_id    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    size       BIGINT NOT NULL,
    part_size  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    complete   BOOLEAN NOT NULL DEFAULT FALSE,
    sha256     BYTEA
);
CREATE INDEX IF NOT EXISTS blobs_account ON blobs (account_id, created_at);
CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_at);
CREATE TABLE IF NOT EXISTS blob_parts (
    blob_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
CREATE TABLE IF NOT EXISTS sealed_access (
    account_id      TEXT PRIMARY KEY,
    access_verifier BYTEA,
    allow_anyone    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS backups (
    account_id  TEXT PRIMARY KEY,
    access_hash BYTEA NOT NULL CONSTRAINT backups_access_unique UNIQUE,
    blob_id     TEXT NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    account_id TEXT PRIMARY KEY,
    key_id     BYTEA NOT NULL,
    revision   BIGINT NOT NULL,
    body       BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);
"""

HANDLES_SCHEMA = """
ALTER TABLE accounts DROP COLUMN IF EXISTS handle_hmac;
CREATE TABLE IF NOT EXISTS handles (
    tag             BYTEA NOT NULL,
    account_id      TEXT NOT NULL,
    bucket          INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'verified', 'unverified')),
    receiving       BOOLEAN NOT NULL DEFAULT TRUE,
    label           BYTEA NOT NULL,
    record          BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    code_hash       BYTEA,
    code_expires_at BIGINT NOT NULL DEFAULT 0,
    code_tries      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, tag)
);
CREATE INDEX IF NOT EXISTS handles_tag ON handles (tag);
CREATE INDEX IF NOT EXISTS handles_bucket ON handles (bucket) WHERE receiving AND state <> 'pending';
"""

# Upgrades by version: 6 is the first version recorded here (handle tags became VOPRF, mode
# 0x01, outputs; the mode-0x00 rows of before cannot be re-tagged, the relay never kept the
# handles, so they are dropped and their owners add them again).
SCHEMA_VERSION = 6
VERSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_schema (
    one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version INTEGER NOT NULL
);
"""

SCHEMA_LOCK = 7366218  # pg_advisory_lock key: two workers starting together take turns


async def create(conn: AsyncConnection) -> None:
    """Create the tables if missing; `conn` is in autocommit mode, on the right search_path."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
    try:
        await conn.execute(SCHEMA)
        await conn.execute(HANDLES_SCHEMA)
        await conn.execute(VERSION_SCHEMA)
        cur = await conn.execute("SELECT version FROM relay_schema")
        row = await cur.fetchone()
        version = row[0] if row is not None else 0
        if version < 6:
            await conn.execute("DELETE FROM handles")
        if version < SCHEMA_VERSION:
            await conn.execute(
                "INSERT INTO relay_schema (one, version) VALUES (TRUE, %s)"
                " ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
                (SCHEMA_VERSION,),
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
