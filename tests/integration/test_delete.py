"""Deleting messages from a home removes their rows and the attachment files saved for them
(issue 4: local attachment files are deleted with the messages they belong to)."""

from __future__ import annotations

import os


def test_deleting_a_message_deletes_its_saved_attachment_files(make_client, tmp_path):
    alice, bob = make_client("alice"), make_client("bob")
    photo = tmp_path / "photo.bin"
    photo.write_bytes(os.urandom(100_000))
    sent = alice.send("bob@example.com", "keep this text?", attachments=[photo])
    kept = alice.send("bob@example.com", "this one stays")
    received = bob.receive()
    assert [m.id for m in received] == [sent.id, kept.id]
    paths = bob.save_attachments(sent.id, tmp_path / "saved")
    assert len(paths) == 1 and paths[0].read_bytes() == photo.read_bytes()

    assert bob.delete_messages([sent.id, "0" * 32]) == 1
    assert not paths[0].exists()
    assert [m.id for m in bob.history("alice@example.com")] == [kept.id]
    assert bob.store.attachments(sent.id) == []
    # The sender's copy is the sender's: untouched.
    assert [m.id for m in alice.history("bob@example.com")] == [sent.id, kept.id]
