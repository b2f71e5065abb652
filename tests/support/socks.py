"""A real SOCKS5 server on loopback for the `--proxy` tests: pysocks5server (PyPI) in a
subprocess, configured the way Tor behaves towards imsg.

- It accepts any username and password, as Tor does (with IsolateSOCKSAuth, on by default,
  Tor keys its circuits by them rather than checking them), and prints each username it is
  given, so a test can check that every request came with a fresh one (`usernames()`).
- Its outgoing connections leave from `egress` (127.0.0.2 by default: Linux routes all of
  127/8 to the loopback device), so the relay sees the proxy's address on proxied requests
  and the client's own 127.0.0.1 on direct ones, as it would see a Tor exit's.

Use as a context manager: `with SocksProxy() as proxy: ... proxy.url ...`.

`Microsocks` is Debian's microsocks the same way (outgoing from `egress`), a proxy that
takes no username at all (the client then sends none); it skips when not installed
(scripts/_setup.sh installs it where it may).
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import sys
import threading
import time

# Runs in the proxy's own process (python -c). The library opens each outgoing connection
# with asyncio.open_connection: wrapped here to bind it to the egress address.
SERVER = r"""
import asyncio
import sys

from socks5server import SocksServer
from socks5server.auth import AuthenticationBase
from socks5server.enums import AuthMethod

listen, egress = sys.argv[1], sys.argv[2]
_open_connection = asyncio.open_connection


async def open_from_egress(host, port, **kwargs):
    return await _open_connection(host, port, local_addr=(egress, 0), **kwargs)


asyncio.open_connection = open_from_egress


class AnyCredentials(AuthenticationBase):
    # RFC 1929 sub-negotiation: VER ULEN UNAME PLEN PASSWD; every pair is accepted.
    async def authenticate(self, reader, writer):
        await reader.readexactly(1)
        user = await reader.readexactly((await reader.readexactly(1))[0])
        await reader.readexactly((await reader.readexactly(1))[0])
        writer.write(b"\x01\x00")
        await writer.drain()
        print("user", user.decode("latin-1"), flush=True)
        return True


async def main():
    socks = SocksServer(listen, 0, public_ip=listen)
    socks.register_authentication(AuthMethod.PASSWORD, AnyCredentials())
    server = await asyncio.start_server(socks.handle_client, listen, 0)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


class SocksProxy:
    def __init__(self, listen: str = "127.0.0.1", egress: str = "127.0.0.2") -> None:
        self.listen, self.egress = listen, egress
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._users: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> SocksProxy:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, self.listen, self.egress],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"SOCKS5 proxy did not start: {line!r}")
        self.url = f"socks5://{self.listen}:{int(line.split()[1])}"
        self._reader = threading.Thread(target=self._read, daemon=True, name="socks-proxy-out")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("user "):
                with self._lock:
                    self._users.append(line[5:].rstrip("\n"))

    def usernames(self) -> list[str]:
        """Every proxy username a client gave so far, in order."""
        with self._lock:
            return list(self._users)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> SocksProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Microsocks:
    """Debian's microsocks on a free loopback port, outgoing connections from `egress`."""

    def __init__(self, listen: str = "127.0.0.1", egress: str = "127.0.0.2") -> None:
        self.listen, self.egress = listen, egress
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @staticmethod
    def available() -> bool:
        return shutil.which("microsocks") is not None

    def start(self, timeout: float = 10.0) -> Microsocks:
        binary = shutil.which("microsocks")
        if binary is None:
            raise RuntimeError("microsocks is not installed (apt-get install microsocks)")
        with socket.socket() as s:
            s.bind((self.listen, 0))
            port = s.getsockname()[1]
        cmd = [binary, "-i", self.listen, "-p", str(port), "-b", self.egress]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # until it accepts connections: a condition, not a guessed sleep
            try:
                socket.create_connection((self.listen, port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("microsocks did not start") from None
                time.sleep(0.02)
        self.url = f"socks5://{self.listen}:{port}"
        return self

    def usernames(self) -> list[str]:
        return []  # it takes none

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> Microsocks:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
