"""The PostgreSQL schema of the relay: the same tables as SQLite (storage/sqlite/schema.py),
no sender column, handles and tokens only as digests. `create` is safe to run from several
workers at once: it holds an advisory lock while it creates.
"""

from __future__ import annotations

from psycopg import AsyncConnection

from imsg_relay.storage.base import SchemaTooNew

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

# Key set fingerprint (imsg_relay/keyset.py) and other relay-wide facts; never a key.
META_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_meta (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
"""

# Versioned migrations, applied in order, each in its own transaction with its version.
# Version 1 is everything before versioning; its statements are idempotent (IF NOT EXISTS),
# so a database made before versioning upgrades through it unharmed.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, SCHEMA + HANDLES_SCHEMA),
    (2, META_SCHEMA),
    # Handle tags became VOPRF (mode 0x01) outputs. The mode-0x00 rows of before cannot be
    # re-tagged (the relay never kept the handles): dropped; their owners add them again.
    (3, "DELETE FROM handles"),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

SCHEMA_LOCK = 7366218  # pg_advisory_lock key: two workers starting together take turns


async def create(conn: AsyncConnection) -> int:
    """Create or upgrade the tables to SCHEMA_VERSION and return it; `conn` is in autocommit
    mode, on the right search_path. Safe to run twice and from several workers at once:
    the advisory lock makes them take turns, and each finds the work done by the first."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
        cur = await conn.execute("SELECT max(version) FROM relay_schema")
        row = await cur.fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database schema is at version {current}, newer than this relay's {SCHEMA_VERSION}: "
                "upgrade the relay (never downgrade a migrated database)"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            async with conn.transaction():
                await conn.execute(statements)
                await conn.execute("INSERT INTO relay_schema (version) VALUES (%s)", (version,))
        return SCHEMA_VERSION
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
