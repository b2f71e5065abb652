"""Issue 12, private delivery: what a relay that records every request (method, path,
headers, TCP connection, source address) can learn about who writes to whom. Each of the
issue's rows fixed here has a regression test that failed before the change:

    row 1  the copy to our own devices is sealed, under an id the relay cannot link
    row 2  a forged 401/409 on a sealed send never leads to a credentialed request
    row 4  prekey bundles and the sender certificate are not fetched credentialed at send
    row 5  unauthenticated requests each have a fresh connection of their own
    row 6  an attachment downloads without a credential
    row 8  a flood of refused sealed attempts does not use up a valid sender's budget

`Connections` is a small local recorder (an ASGI middleware around the real relay) that
keeps, per request, the peer address and port of its TCP connection and whether it
carried a credential.
"""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from device_helpers import link_device
from starlette.responses import JSONResponse

from imsg import errors
from imsg.client import Client
from imsg.protocol.sealed import is_sealed
from imsg.protocol.session import Address
from imsg.protocol.stores import OutgoingBatch
from imsg.relay_client import AnonymousRelay

from support.relays import ThreadRelay, relay_settings
from support.socks import Microsocks

ALICE, BOB = "alice@example.com", "bob@example.com"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    peer: tuple[str, int]
    token: str  # the bearer token, or ""
    access_key: bool  # an Unidentified-Access-Key header


class Connections:
    """ASGI middleware: one `Seen` per HTTP request."""

    def __init__(self, app):
        self.app = app
        self.log: list[Seen] = []
        self.lock = threading.Lock()
        # A malicious relay's answers: (method, path prefix, status, JSON body), each used
        # once, for the next request that matches, instead of the real app's answer.
        self.forged: list[tuple[str, str, int, dict]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode()
            seen = Seen(
                scope["method"],
                scope["path"],
                tuple(scope.get("client") or ("", 0)),
                auth.removeprefix("Bearer ") if auth else "",
                b"unidentified-access-key" in headers,
            )
            with self.lock:
                self.log.append(seen)
                forged = next((f for f in self.forged if f[0] == seen.method and seen.path.startswith(f[1])), None)
                if forged is not None:
                    self.forged.remove(forged)
            if forged is not None:
                response = JSONResponse(forged[3], status_code=forged[2])
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def take(self) -> list[Seen]:
        with self.lock:
            out, self.log = self.log, []
        return out


@pytest.fixture
def recorded(tmp_path: Path):
    r = ThreadRelay(relay_settings(tmp_path / "relay-data"), wrap=Connections).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def clients(tmp_path: Path, recorded: ThreadRelay):
    opened: list[Client] = []

    def make(name: str, link_to: Client | None = None, **kwargs) -> Client:
        home = tmp_path / "homes" / name
        if link_to is not None:
            link_device(recorded.url, link_to, home)
        fresh = not (home / "imsg.db").exists()
        c = Client.open(home, relay=recorded.url, **kwargs)
        opened.append(c)
        if fresh:
            c.init(f"{name}@example.com", name=name.capitalize())
        return c

    yield make
    for c in opened:
        c.close()


def credentialed_ports(log: list[Seen]) -> set[tuple[str, int]]:
    return {s.peer for s in log if s.token}


# --- C1: the anonymous relay client ---


def test_anonymous_requests_have_no_credential_and_a_connection_each(recorded, clients):
    alice = clients("alice")
    account_id = alice.whoami().account_id
    rec: Connections = recorded.middleware
    rec.take()
    anon = AnonymousRelay(recorded.url)
    for _ in range(3):
        assert anon.get_profile(account_id, "00" * 32, max_bytes=1 << 16) is None
    log = rec.take()
    assert [s.path for s in log] == [f"/v1/profile/{account_id}/{'00' * 32}"] * 3
    assert all(not s.token for s in log)
    assert len({s.peer for s in log}) == 3  # three TCP connections, none reused


def test_proxy_urls_are_checked():
    with pytest.raises(errors.UsageError):
        AnonymousRelay("http://127.0.0.1:1", proxy="http://127.0.0.1:9050")
    with pytest.raises(errors.UsageError):  # imsg picks the username itself, per request
        AnonymousRelay("http://127.0.0.1:1", proxy="socks5://user:pw@127.0.0.1:9050")
    assert AnonymousRelay("http://127.0.0.1:1", proxy="socks5h://127.0.0.1:9050").proxy


def share(a: Client, b: Client) -> None:
    """b gives a its profile key (and so its access key): b adds a and writes to it."""
    handle = a.whoami().handle
    b.contacts_add(handle)
    b.send(handle, "hello")
    a.receive()
    assert a.store.contact_by_handle(b.whoami().handle).profile_key == b.store.load_account().profile_key


def naming(log: list[Seen], account_id: str) -> list[Seen]:
    """The credentialed requests whose path names `account_id`."""
    return [s for s in log if s.token and account_id in s.path]


def envelope_rows(relay: ThreadRelay, account_id: str) -> list[tuple[int, str, bytes]]:
    with relay.db() as db:
        return db.execute(
            "SELECT device_id, message_id, body FROM envelopes WHERE account_id = ? ORDER BY seq", (account_id,)
        ).fetchall()


# --- row 1: the copy to our own devices ---


def test_own_device_copy_is_sealed_under_an_unlinkable_id_row1(recorded, clients):
    """Row 1: the copy of a sealed message to the sender's other devices went identified,
    under the same message id: the relay's own envelopes table named the sender."""
    alice, bob = clients("alice"), clients("bob")
    alice2 = clients("alice2", link_to=alice)
    share(alice, bob)
    alice2.receive()
    alice_id, bob_id = alice.whoami().account_id, bob.whoami().account_id
    sent = alice.send(BOB, "sealed, and so is its copy")
    assert sent.sealed
    to_bob = [r for r in envelope_rows(recorded, bob_id) if r[1] == sent.id]
    assert to_bob and all(is_sealed(body) for _, _, body in to_bob)
    copies = envelope_rows(recorded, alice_id)
    assert copies, "the copy to alice's other device"
    assert all(mid != sent.id for _, mid, _ in copies)  # no shared id links it to the message
    assert all(is_sealed(body) for _, _, body in copies)  # and no identified body names alice
    assert {d for d, _, _ in copies} == {1, 2}  # every device addressed: 1 gets the decoy
    alice2.receive()
    assert [(m.id, m.text) for m in alice2.history(BOB)][-1] == (sent.id, "sealed, and so is its copy")
    assert alice.receive() == [] and alice.problems == []  # the decoy is dropped quietly
    assert envelope_rows(recorded, alice_id) == []


def test_identified_send_is_reported_as_such_even_when_its_own_copy_went_sealed(recorded, clients):
    """A sender with a second device seals the copy to it; the message itself went
    identified (bob never shared his key): the result must say so, with the reason."""
    alice, bob = clients("alice"), clients("bob")
    alice2 = clients("alice2", link_to=alice)
    alice2.receive()
    bob_id = bob.whoami().account_id
    sent = alice.send(BOB, "identified, its copy sealed")
    assert sent.sealed is False and sent.sealed_reason == "no_access_key"
    to_bob = [r for r in envelope_rows(recorded, bob_id) if r[1] == sent.id]
    assert to_bob and not any(is_sealed(body) for _, _, body in to_bob)
    assert all(is_sealed(body) for _, _, body in envelope_rows(recorded, alice.whoami().account_id))


def test_after_a_first_message_a_conversation_goes_sealed_both_ways_without_sharing_a_profile(recorded, clients):
    """Every message carries its sender's access key (never the profile key): only the very
    first message of a conversation goes identified; the reply and all after it are
    sealed, though neither side shared a name or photo (default share policy)."""
    alice, bob = clients("alice"), clients("bob")
    first = alice.send(BOB, "hi, first contact")
    assert first.sealed is False and first.sealed_reason == "no_access_key"
    assert [m.text for m in bob.receive()] == ["hi, first contact"]
    assert bob.store.contact_by_handle(ALICE).profile_key == b""  # no profile was shared
    reply = bob.send(ALICE, "hello back")
    assert reply.sealed is True
    assert [m.text for m in alice.receive()] == ["hello back"]
    again = alice.send(BOB, "and now sealed too")
    assert again.sealed is True
    assert [m.text for m in bob.receive()] == ["and now sealed too"]
    bob_id, alice_id = bob.whoami().account_id, alice.whoami().account_id
    identified = [s for s in recorded.middleware.log if s.token and s.method == "PUT" and "/v1/messages/" in s.path]
    assert [s.path for s in identified] == [f"/v1/messages/{bob_id}"]  # only the first contact
    assert alice_id not in {s.path.rsplit("/", 1)[-1] for s in identified}


def test_own_device_copy_waits_by_default(recorded, clients, tmp_path):
    """The copy's timing is decoupled from the send: by default it waits 2-30 s in the
    outbox (IMSG_SYNC_DELAY=0 in the rest of the tests) and the next flush sends it."""
    alice = clients("alice", sync_delay=None)
    assert alice._ctx.sync_delay == (0.0, 0.0)  # the tests' environment
    alice.close()
    alice = Client.open(tmp_path / "homes" / "alice", relay=recorded.url, sync_delay=(2, 30))
    bob = clients("bob")
    alice2 = clients("alice2", link_to=alice)
    share(alice, bob)
    alice2.receive()
    clock = [alice._now()]
    alice._now = lambda: clock[0]
    sent = alice.send(BOB, "now")
    (waiting,) = alice.store.outgoing()
    assert waiting.message_id == sent.id and waiting.account_id == alice.whoami().account_id
    assert clock[0] + 2000 <= waiting.not_before <= clock[0] + 30_000 and waiting.envelope_id != sent.id
    assert alice.flush_outbox() == 0  # not yet due
    alice2.receive()
    assert sent.id not in [m.id for m in alice2.history(BOB)]
    clock[0] = waiting.not_before
    assert alice.flush_outbox() == 1 and alice.store.outgoing() == []
    alice2.receive()
    assert [m.id for m in alice2.history(BOB)][-1] == sent.id
    alice.close()


# --- row 2: forged 401 and 409 on a sealed send ---


def test_forged_401_does_not_downgrade_a_contact_whose_key_we_hold_row2(recorded, clients):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    bob_id = bob.whoami().account_id
    rec: Connections = recorded.middleware
    rec.take()
    rec.forged.append(("PUT", f"/v1/sealed/messages/{bob_id}", 401, {"error": "access_denied", "message": "no"}))
    with pytest.raises(errors.SealedRefusedError) as exc:
        alice.send(BOB, "must not go identified")
    assert exc.value.exit_code == 5 and exc.value.details["kept"] == "outbox"
    log = rec.take()
    assert naming(log, bob_id) == []  # nothing identified, no credentialed request naming bob
    assert [p.code for p in alice.problems] == ["sealed_refused"]
    # The relay's word alone changed nothing: the next flush sends it sealed.
    assert alice.flush_outbox() == 1
    assert naming(rec.take(), bob_id) == []
    assert [m.text for m in bob.receive()] == ["must not go identified"]


def test_forged_409_refetches_anonymously_and_retries_sealed_row2(recorded, clients):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    alice.sealed().set_sealed_only(True)
    bob_id = bob.whoami().account_id
    rec: Connections = recorded.middleware
    rec.take()
    rec.forged.append(
        ("PUT", f"/v1/sealed/messages/{bob_id}", 409, {"error": "device_mismatch", "missing": [], "extra": []})
    )
    sent = alice.send(BOB, "after a forged 409")
    assert sent.sealed
    log = rec.take()
    assert naming(log, bob_id) == []
    reads = [s for s in log if s.path == f"/v1/accounts/{bob_id}"]
    assert reads and all(not s.token for s in reads)  # the refetch carried no credential
    assert credentialed_ports(log).isdisjoint({s.peer for s in reads})
    assert [m.text for m in bob.receive()] == ["after a forged 409"]


# --- row 4: bundles and certificate ---


def test_bundles_are_fetched_with_the_access_key_not_a_credential_row4(recorded, clients):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    bob_id = bob.whoami().account_id
    alice.store.delete_session(Address(bob_id, 1))  # so the next send needs bob's bundle
    rec: Connections = recorded.middleware
    rec.take()
    assert alice.send(BOB, "a fresh session").sealed
    log = rec.take()
    fetches = [s for s in log if s.path == f"/v1/keys/{bob_id}"]
    assert fetches and all(not s.token and s.access_key for s in fetches)
    assert naming(log, bob_id) == []
    assert [m.text for m in bob.receive()] == ["a fresh session"]


def test_certificate_is_not_fetched_at_send_time_row4(recorded, clients):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    clock = [alice._now()]
    alice._now = lambda: clock[0]
    rec: Connections = recorded.middleware
    clock[0] += 2 * 3600 * 1000  # two hours on: main fetched a new one before this send
    rec.take()
    assert alice.send(BOB, "two hours later").sealed
    assert not [s for s in rec.take() if s.path == "/v1/sealed/certificate"]
    # Days on, past its refresh point: receive renews it, and the send after uses that.
    clock[0] += 3 * 86_400_000 + 1
    alice.receive()
    assert [s.method for s in rec.take() if s.path == "/v1/sealed/certificate"] == ["POST"]
    assert alice.send(BOB, "days later").sealed
    assert not [s for s in rec.take() if s.path == "/v1/sealed/certificate"]
    # The next refresh point is ahead (drawn 1-3 sevenths into the new one's life; this
    # clock runs days ahead of the relay's, so that life looks shorter here).
    assert int(alice.store.get_setting("sealed.cert_refresh_at")) > clock[0]
    assert [m.text for m in bob.receive()] == ["two hours later", "days later"]


# --- row 5: connections ---


def test_unauthenticated_requests_never_share_a_credentialed_connection_row5(recorded, clients):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    share(bob, alice)
    bob.receive()
    rec: Connections = recorded.middleware
    rec.take()
    for i in range(3):
        assert alice.send(BOB, f"sealed {i}").sealed
    bob.receive()
    log = rec.take()
    sealed = [s for s in log if s.path.startswith("/v1/sealed/messages/")]
    assert len(sealed) >= 3 and len({s.peer for s in sealed}) == len(sealed)  # a connection each
    anonymous = {s.peer for s in log if not s.token}
    assert anonymous and anonymous.isdisjoint(credentialed_ports(log))


# --- row 6: attachments ---


def test_attachment_download_needs_no_credential_row6(recorded, clients, tmp_path):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    src = tmp_path / "photo.bin"
    src.write_bytes(b"\x89PNG" + bytes(5000))
    alice.send(BOB, "a file", attachments=[src])
    rec: Connections = recorded.middleware
    (m,) = bob.receive()
    rec.take()
    (path,) = bob.save_attachments(m.id, tmp_path / "out")
    assert path.read_bytes() == src.read_bytes()
    gets = [s for s in rec.take() if s.path.startswith("/v1/blobs/")]
    assert gets and all(not s.token for s in gets)


# --- row 8 (client side): one recipient's 429 does not block the others ---


def test_a_flood_of_bad_keys_does_not_stop_a_valid_sender_row8(recorded, clients):
    alice, bob = clients("alice"), clients("bob")
    share(alice, bob)
    bob_id = bob.whoami().account_id
    flood = AnonymousRelay(recorded.url)
    for _ in range(120):  # past the valid senders' burst (100) too
        with pytest.raises(errors.RelayRefusedError):
            flood.send_sealed(bob_id, "ab" * 16, [(1, b"\x01\x02" + bytes(2046))], bytes(16))
    assert alice.send(BOB, "still delivered").sealed
    assert [m.text for m in bob.receive()] == ["still delivered"]


def test_one_recipients_429_does_not_block_other_sends_or_receive_row8(tmp_path):
    settings = relay_settings(tmp_path / "relay-data", sealed_rate=0.001, sealed_burst=3)
    with ThreadRelay(settings) as relay:
        homes = tmp_path / "homes"
        made = []

        def make(name: str) -> Client:
            c = Client.open(homes / name, relay=relay.url)
            made.append(c)
            c.init(f"{name}@example.com", name=name)
            return c

        try:
            alice, bob, carol = make("alice"), make("bob"), make("carol")
            share(alice, bob)  # bob's "hello" is one sealed send to alice, not to bob
            for i in range(3):  # bob's budget of sealed sends (3 here) is used up...
                alice.send(BOB, f"m{i}")
            with pytest.raises(errors.RelayRefusedError) as exc:
                alice.send(BOB, "queued behind the limit")
            assert exc.value.status == 429
            assert len(alice.store.outgoing()) == 1
            # ... and alice can still write to carol and receive: the queued batch waits.
            carol.contacts_add("alice@example.com")
            carol.send("alice@example.com", "hi alice")
            assert [m.text for m in alice.receive()] == ["hi alice"]
            assert alice.send("carol@example.com", "to carol").devices == 1
            assert [m.text for m in carol.receive()] == ["to carol"]
            assert len(alice.store.outgoing()) == 1  # still waiting for bob
        finally:
            for c in made:
                c.close()


# --- the network address: a real SOCKS5 proxy on loopback ---


PROXY_EXIT = "127.0.0.2"


@pytest.fixture
def socks_proxy():
    """Debian's microsocks on a loopback port, its outgoing connections bound to 127.0.0.2:
    the relay sees that address for every proxied request, 127.0.0.1 for the others."""
    if not Microsocks.available():
        pytest.skip("microsocks (Debian package) is not installed and scripts/_setup.sh could not install it")
    with Microsocks(egress=PROXY_EXIT) as proxy:
        yield proxy.url


def test_through_a_socks_proxy_the_relay_sees_only_the_proxy_for_unauthenticated_requests(
    recorded, clients, socks_proxy, tmp_path
):
    alice, bob = clients("alice", proxy=socks_proxy), clients("bob", proxy=socks_proxy)
    share(alice, bob)
    share(bob, alice)
    bob.receive()
    src = tmp_path / "doc.bin"
    src.write_bytes(bytes(3000))
    rec: Connections = recorded.middleware
    rec.take()
    for i in range(3):
        assert alice.send(BOB, f"via the proxy {i}").sealed
    alice.send(BOB, "with a file", attachments=[src])
    got = bob.receive()
    bob.save_attachments(got[-1].id, tmp_path / "out")
    assert [m.text for m in got] == ["via the proxy 0", "via the proxy 1", "via the proxy 2", "with a file"]
    log = rec.take()
    anonymous = [s for s in log if not s.token]
    assert {s.path.split("/")[2] for s in anonymous} >= {"sealed", "blobs"}
    assert {s.peer[0] for s in anonymous} == {PROXY_EXIT}  # never our own address
    assert len({s.peer for s in anonymous}) == len(anonymous)  # and each its own connection
    assert {s.peer[0] for s in log if s.token} == {"127.0.0.1"}  # credentialed: direct, as they name us anyway


def test_watch_wakes_for_a_waiting_copy(recorded, clients):
    """`watch` long-polls for up to `wait` seconds; a copy to our own devices that falls
    due sooner cuts the poll short, so the next receive's flush sends it on time."""
    alice = clients("alice")
    clock = [alice._now()]
    alice._now = lambda: clock[0]
    inbox = alice._inbox
    assert inbox._wait_for_outbox(30) == 30  # nothing waits
    account = alice.whoami().account_id
    alice.store.add_outgoing(OutgoingBatch("c" * 32, account, (), clock[0], "d" * 32, clock[0] + 4500))
    assert inbox._wait_for_outbox(30) == 5  # rounded up to the relay's whole seconds
    assert inbox._wait_for_outbox(2) == 2
    clock[0] += 4500
    assert inbox._wait_for_outbox(30) == 30  # due now: the flush takes it, no early wake-up


def test_each_proxied_request_offers_a_fresh_proxy_username():
    """Against a proxy that takes credentials (as Tor does: IsolateSOCKSAuth gives each
    username its own circuit), every request offers a new random username and password.
    microsocks takes no credentials, so this side is watched at the SOCKS handshake itself
    (RFC 1928 §3, RFC 1929): a listener that records what is offered, then refuses."""
    offered: list[tuple[bytes, bytes]] = []
    greetings: list[bytes] = []

    class Handshake(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            s = self.request
            head = s.recv(2)
            methods = s.recv(head[1]) if len(head) == 2 else b""
            greetings.append(methods)
            s.sendall(b"\x05\x02")  # "username/password, please"
            ver_ulen = s.recv(2)
            if len(ver_ulen) < 2:
                return  # the one-off probe: a greeting, nothing after it
            user = s.recv(ver_ulen[1])
            password = s.recv(s.recv(1)[0])
            offered.append((user, password))
            s.sendall(b"\x01\x01")  # refused: the request goes no further

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handshake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        anon = AnonymousRelay("http://127.0.0.1:9", proxy=f"socks5://127.0.0.1:{server.server_address[1]}")
        for _ in range(3):
            with pytest.raises(errors.RelayUnavailableError):
                anon.get_account("ab" * 16)
    finally:
        server.shutdown()
        server.server_close()
    assert len(offered) == 3 and len(set(offered)) == 3  # a fresh username and password each
    assert all(len(u) == 16 and len(p) == 16 for u, p in offered)
    assert greetings[0] == b"\x02" and len(greetings) == 4  # one probe, then one per request
