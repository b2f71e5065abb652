"""The in-memory reference store. Used by unit tests and as the executable definition
of what every store must do (transactions roll back completely on an exception)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

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


class MemoryStore:
    def __init__(self) -> None:
        self._account: LocalAccount | None = None
        self._signed: dict[int, SignedPreKey] = {}
        self._kem: dict[int, KemPreKey] = {}
        self._one_time: dict[int, OneTimePreKey] = {}
        self._next_id = 1
        self._sessions: dict[Address, bytes] = {}
        self._contacts: dict[str, Contact] = {}
        self._messages: dict[str, StoredMessage] = {}
        self._shown: set[str] = set()
        self._outbox: dict[tuple[str, str], OutgoingBatch] = {}
        self._held: dict[str, HeldMessage] = {}
        self._attachments: dict[tuple[str, int], StoredAttachment] = {}
        self._uploads: dict[str, Upload] = {}
        self._settings: dict[str, str] = {}
        self._handles: dict[str, OwnHandle] = {}
        self._profiles: dict[str, CachedProfile] = {}
        self._depth = 0

    _STATE = (
        "_account",
        "_signed",
        "_kem",
        "_one_time",
        "_next_id",
        "_sessions",
        "_contacts",
        "_messages",
        "_shown",
        "_outbox",
        "_held",
        "_attachments",
        "_uploads",
        "_settings",
        "_handles",
        "_profiles",
    )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        snapshot = {name: copy.copy(getattr(self, name)) for name in self._STATE}
        self._depth = 1
        try:
            yield
        except BaseException:
            for name, value in snapshot.items():
                setattr(self, name, value)
            raise
        finally:
            self._depth = 0

    def close(self) -> None:
        pass

    # accounts
    def load_account(self) -> LocalAccount | None:
        return self._account

    def save_account(self, account: LocalAccount) -> None:
        self._account = account

    # cached profiles
    def cached_profile(self, account_id: str) -> CachedProfile | None:
        return self._profiles.get(account_id)

    def save_cached_profile(self, profile: CachedProfile) -> None:
        self._profiles[profile.account_id] = profile

    # settings
    def get_setting(self, key: str) -> str | None:
        return self._settings.get(key)

    def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self._settings.pop(key, None)
        else:
            self._settings[key] = value

    def settings(self) -> dict[str, str]:
        return dict(sorted(self._settings.items()))

    # own handles
    def own_handles(self) -> list[OwnHandle]:
        return sorted(self._handles.values(), key=lambda h: (h.added_at, h.handle))

    def save_own_handle(self, handle: OwnHandle) -> None:
        self._handles[handle.handle] = handle

    def remove_own_handle(self, handle: str) -> None:
        self._handles.pop(handle, None)

    # prekeys
    def get_signed_prekey(self, key_id: int) -> SignedPreKey | None:
        return self._signed.get(key_id)

    def save_signed_prekey(self, key: SignedPreKey) -> None:
        self._signed[key.key_id] = key

    def signed_prekeys(self) -> list[SignedPreKey]:
        return sorted(self._signed.values(), key=lambda k: k.key_id)

    def remove_signed_prekey(self, key_id: int) -> None:
        self._signed.pop(key_id, None)

    def get_kem_prekey(self, key_id: int) -> KemPreKey | None:
        return self._kem.get(key_id)

    def save_kem_prekey(self, key: KemPreKey) -> None:
        self._kem[key.key_id] = key

    def remove_kem_prekey(self, key_id: int) -> None:
        self._kem.pop(key_id, None)

    def kem_prekey_ids(self) -> list[int]:
        return sorted(self._kem)

    def get_one_time_prekey(self, key_id: int) -> OneTimePreKey | None:
        return self._one_time.get(key_id)

    def save_one_time_prekey(self, key: OneTimePreKey) -> None:
        self._one_time[key.key_id] = key

    def remove_one_time_prekey(self, key_id: int) -> None:
        self._one_time.pop(key_id, None)

    def next_prekey_id(self) -> int:
        key_id, self._next_id = self._next_id, self._next_id + 1
        return key_id

    # sessions
    def load_session(self, address: Address) -> bytes | None:
        return self._sessions.get(address)

    def save_session(self, address: Address, record: bytes) -> None:
        self._sessions[address] = record

    def delete_session(self, address: Address) -> None:
        self._sessions.pop(address, None)

    def session_addresses(self) -> list[Address]:
        return sorted(self._sessions)

    # contacts
    def get_contact(self, account_id: str) -> Contact | None:
        return self._contacts.get(account_id)

    def contact_by_handle(self, handle: str) -> Contact | None:
        rank = {"ok": 0, "changed": 1, "replaced": 2}
        rows = [c for c in self._contacts.values() if c.handle == handle]
        return min(rows, key=lambda c: (rank.get(c.status, 3), -c.first_seen), default=None)

    def reassign_messages(self, old_account_id: str, new_account_id: str) -> None:
        for mid, m in list(self._messages.items()):
            if m.peer_account_id == old_account_id:
                self._messages[mid] = StoredMessage(
                    m.message_id,
                    new_account_id,
                    m.peer_handle,
                    m.direction,
                    m.sender_handle,
                    m.recipient_handle,
                    m.text,
                    m.sent_at,
                    m.stored_at,
                    m.sender_device,
                )

    def save_contact(self, contact: Contact) -> None:
        self._contacts[contact.account_id] = contact

    def contacts(self) -> list[Contact]:
        return sorted(self._contacts.values(), key=lambda c: c.handle)

    # messages
    def add_message(self, message: StoredMessage) -> bool:
        if message.message_id in self._messages:
            return False
        self._messages[message.message_id] = message
        if message.direction == "out":
            self._shown.add(message.message_id)
        return True

    def has_message(self, message_id: str) -> bool:
        return message_id in self._messages

    def _ordered(self) -> list[StoredMessage]:
        return sorted(self._messages.values(), key=lambda m: (m.sent_at, m.stored_at, m.message_id))

    def history(self, peer_account_id: str, limit: int) -> list[StoredMessage]:
        rows = [m for m in self._ordered() if m.peer_account_id == peer_account_id]
        return rows[-limit:] if limit > 0 else []

    def conversations(self) -> list[Conversation]:
        chats: dict[str, Conversation] = {}
        for m in self._ordered():
            prev = chats.get(m.peer_account_id)
            count = prev.messages + 1 if prev else 1
            chats[m.peer_account_id] = Conversation(m.peer_account_id, m.peer_handle, m.text, m.sent_at, count)
        return sorted(chats.values(), key=lambda c: c.last_at, reverse=True)

    def unshown(self) -> list[StoredMessage]:
        return [m for m in self._ordered() if m.message_id not in self._shown]

    def mark_shown(self, message_ids: list[str]) -> None:
        self._shown.update(message_ids)

    # outbox
    def add_outgoing(self, batch: OutgoingBatch) -> None:
        self._outbox[(batch.message_id, batch.account_id)] = batch

    def outgoing(self) -> list[OutgoingBatch]:
        return sorted(self._outbox.values(), key=lambda b: b.created_at)

    def remove_outgoing(self, message_id: str, account_id: str) -> None:
        self._outbox.pop((message_id, account_id), None)

    # held
    def hold_message(self, message: HeldMessage) -> None:
        self._held[message.message_id] = message

    def held_messages(self, handle: str | None = None) -> list[HeldMessage]:
        rows = [m for m in self._held.values() if handle is None or m.handle == handle]
        return sorted(rows, key=lambda m: m.created_at)

    def release_held(self, message_id: str) -> None:
        self._held.pop(message_id, None)

    # attachments and uploads
    def add_attachments(self, attachments: list[StoredAttachment]) -> None:
        for a in attachments:
            self._attachments.setdefault((a.message_id, a.index), a)

    def attachments(self, message_id: str) -> list[StoredAttachment]:
        return sorted((a for (m, _), a in self._attachments.items() if m == message_id), key=lambda a: a.index)

    def set_saved_path(self, message_id: str, index: int, path: str) -> None:
        a = self._attachments.get((message_id, index))
        if a is not None:
            self._attachments[(message_id, index)] = replace(a, saved_path=path)

    def save_upload(self, upload: Upload) -> None:
        self._uploads[upload.blob_id] = upload

    def get_upload(self, blob_id: str) -> Upload | None:
        return self._uploads.get(blob_id)

    def find_upload(self, path: str, plain_size: int, mtime_ns: int) -> Upload | None:
        rows = [u for u in self._uploads.values() if (u.path, u.plain_size, u.mtime_ns) == (path, plain_size, mtime_ns)]
        return max(rows, key=lambda u: u.created_at, default=None)

    def uploads(self) -> list[Upload]:
        return sorted(self._uploads.values(), key=lambda u: u.created_at)

    def remove_upload(self, blob_id: str) -> None:
        self._uploads.pop(blob_id, None)

    def messages_older_than(self, cutoff_ms: int, limit: int) -> list[str]:
        old = [m.message_id for m in self._messages.values() if min(m.sent_at, m.stored_at) < cutoff_ms]
        return old[: max(limit, 0)]

    def checkpoint(self) -> None:
        pass  # nothing on disk

    def delete_messages(self, message_ids: list[str]) -> list[str]:
        paths = []
        for mid in message_ids:
            self._messages.pop(mid, None)
            self._shown.discard(mid)
            for key in [k for k in self._attachments if k[0] == mid]:
                saved = self._attachments.pop(key).saved_path
                if saved:
                    paths.append(saved)
        return paths
