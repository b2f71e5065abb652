"""The receive rules (imsg.protocol.receive), which the client's inbox runs and the
two-party helper's receive_envelope and deliver go through.

Each rule that rejects must leave the receiving device exactly as it was: no session
advanced, no prekey consumed (SECURITY-TESTS rows 1, 6 and 15 test the same through the
envelope; here the rules one by one).
"""

from __future__ import annotations

import pytest
from protocol_helpers import SessionPair

from imsg.protocol import envelope as env
from imsg.protocol import receive
from imsg.protocol import session as sess
from imsg.protocol.content import KIND_PROFILE, KIND_SYNC, KIND_TEXT, Content, ProfileShare
from imsg.protocol.encoding import KEY_ED25519, encode_key
from imsg.protocol.errors import CertificateError, DuplicateMessageError, RemoteProtocolError, UntrustedIdentityError
from imsg.protocol.identity import verify_device_list

OTHER_MID = "f" * 32


def _trusted(pair: SessionPair, who: str):
    party = pair.party(who)
    return verify_device_list(party.device_list, party.account.public)


def _envelope(pair: SessionPair, content: Content) -> bytes:
    package, ciphertext = env.seal_content(content.encode(), pair.alice.rng)
    session_message = pair.send("alice", package)
    return env.Envelope(env.KIND_IDENTIFIED, pair.alice.address, session_message, ciphertext).encode()


def test_from_own_account():
    me = sess.Address("ab" * 16, 1)
    assert receive.from_own_account(sess.Address("ab" * 16, 2), me) is True
    assert receive.from_own_account(sess.Address("cd" * 16, 1), me) is False
    with pytest.raises(RemoteProtocolError, match="this very device"):
        receive.from_own_account(me, me)


def test_sender_device_must_be_in_the_signed_list_of_its_account():
    pair = SessionPair()
    alice = pair.alice
    devices = _trusted(pair, "alice")
    assert receive.sender_device(devices, alice.address).identity_key == alice.device.identity.public
    assert not receive.needs_device_list(devices, alice.address)
    unknown_device = sess.Address(alice.address.account_id, 7)
    assert receive.needs_device_list(devices, unknown_device) and receive.needs_device_list(None, alice.address)
    with pytest.raises(UntrustedIdentityError):
        receive.sender_device(devices, unknown_device)
    # A device id the list holds, but under another account: not that account's device.
    with pytest.raises(UntrustedIdentityError):
        receive.sender_device(devices, pair.bob.address)


def test_check_certified_identity():
    key = bytes(range(32))
    receive.check_certified_identity(None, key)  # identified envelope: nothing to compare
    receive.check_certified_identity(key, key)
    with pytest.raises(CertificateError):
        receive.check_certified_identity(bytes(32), key)


def test_content_id_mismatch_keeps_nothing():
    pair = SessionPair()
    mid, blob = pair.send_envelope("alice", "bound to its id")
    before = pair.state("bob")
    with pytest.raises(RemoteProtocolError, match="content id"):
        pair.receive_envelope("bob", blob, OTHER_MID)
    assert pair.state("bob") == before  # the first message's one-time prekey is still there
    assert pair.receive_envelope("bob", blob, mid).text == "bound to its id"
    assert pair.state("bob") != before


@pytest.mark.parametrize("kind", [KIND_SYNC, KIND_PROFILE])
def test_sync_and_profile_content_only_from_our_own_devices(kind):
    pair = SessionPair()
    pair.handshake()
    mid = pair.alice.rng(16).hex()
    if kind == KIND_SYNC:
        content = Content(
            mid, pair.now, KIND_SYNC, "alice", "carol", "a copy?", "cd" * 16, encode_key(KEY_ED25519, bytes(32))
        )
    else:
        content = Content(mid, pair.now, KIND_PROFILE, "alice", "alice", profile=ProfileShare(bytes(32), 9, "off"))
    blob = _envelope(pair, content)
    before = pair.state("bob")
    with pytest.raises(RemoteProtocolError, match="only from our own devices"):
        pair.receive_envelope("bob", blob, mid)
    assert pair.state("bob") == before
    receive.check_kind(content, own=True)  # the same content from our own device is fine


def test_accept_commits_session_and_prekeys_in_one_step():
    """A first message: the session record and the consumed one-time prekeys change
    together, and only if the caller's checks pass."""
    pair = SessionPair()
    message = pair.send("alice", b"first")
    bob, alice = pair.bob, pair.alice
    keys = {
        "local": bob.device,
        "local_address": bob.address,
        "remote_address": alice.address,
        "remote_identity_key": alice.device.identity.public,
        "now": pair.now,
    }
    before = pair.state("bob")

    def refuse(plaintext: bytes) -> None:
        assert plaintext == b"first"
        raise RemoteProtocolError("the caller's check failed")

    with pytest.raises(RemoteProtocolError):
        receive.accept(bob.store, message, then=refuse, **keys)
    assert pair.state("bob") == before
    kept, result = receive.accept(bob.store, message, then=lambda plaintext: plaintext.upper(), **keys)
    assert kept == b"FIRST" and result.new_session
    assert (
        result.used_one_time_prekey is not None and bob.store.get_one_time_prekey(result.used_one_time_prekey) is None
    )
    assert result.used_kem_prekey is not None and bob.store.get_kem_prekey(result.used_kem_prekey) is None
    assert bob.store.load_session(alice.address) == result.record.encode()
    # decrypt alone writes nothing, and the same message again is a duplicate.
    after = pair.state("bob")
    with pytest.raises(DuplicateMessageError):
        receive.decrypt(bob.store, message, **keys)
    assert pair.state("bob") == after


def test_text_from_a_peer_passes_every_rule():
    pair = SessionPair()
    mid = pair.alice.rng(16).hex()
    blob = _envelope(pair, Content(mid, pair.now, KIND_TEXT, "alice", "bob", "hi"))
    assert pair.receive_envelope("bob", blob, mid).text == "hi"


# --- issue 12: sealed copies to our own devices ---


def test_a_sync_copy_from_our_own_account_may_travel_under_another_id():
    """The copy to our own devices goes under a fresh envelope id (so the relay cannot link
    it to the message it copies): only a KIND_SYNC from our own account is let through."""
    sync = Content("a" * 32, 1, KIND_SYNC, "me@example.com", "them@example.com", "x", "b" * 32, b"")
    receive.check_content_id(sync, OTHER_MID, own=True)
    with pytest.raises(RemoteProtocolError):
        receive.check_content_id(sync, OTHER_MID)  # not from our own account
    text = Content("a" * 32, 1, KIND_TEXT, "me@example.com", "me@example.com", "note")
    with pytest.raises(RemoteProtocolError):
        receive.check_content_id(text, OTHER_MID, own=True)  # a note to self keeps its id


def test_the_decoy_for_this_very_device_is_recognised():
    me = sess.Address("a" * 32, 1)
    assert receive.is_own_decoy(sess.Address("a" * 32, 1), me)
    assert not receive.is_own_decoy(sess.Address("a" * 32, 2), me)
    assert not receive.is_own_decoy(None, me)  # identified envelopes are never decoys
