"""`imsg-relay`: run the relay.

stdout carries one line, `imsg-relay listening on http(s)://HOST:PORT`, once the socket
accepts connections (scripts parse it; with --port 0 it is how they learn the port).
Everything else goes to stderr, and no log line ever holds a request body, a token, a
handle or a client address: uvicorn's access log is off and its own messages that name
addresses are kept below the log level.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from imsg_relay.settings import Settings, SettingsError

log = logging.getLogger("imsg_relay")


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not sockets:
            return
        host, port = sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.ssl_certfile else "http"
        print(f"imsg-relay listening on {scheme}://{shown}:{port}", flush=True)
        log.info("relay accepting connections")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal asks for a clean stop and exit 0; uvicorn would re-raise it afterwards.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's INFO lines name the bound address ("Uvicorn running on http://127.0.0.1...")
    # and, for some protocol errors, the client's; only its warnings and errors pass.
    # httpx's INFO lines name every URL it posts to: the SMS gateway's may carry its key.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, log_level: str = "INFO", tls: tuple[str, str] | None = None) -> int:
    from imsg_relay.app import create_app

    _setup_logging(log_level)
    app = create_app(settings)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        print(f"error: cannot listen on port {settings.port}: {exc.strerror}", file=sys.stderr)
        return 4
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # never read client addresses from headers either
        timeout_keep_alive=30,  # idle connections close (slowloris, R5)
        timeout_graceful_shutdown=2,  # long polls do not hold up a SIGTERM
        # HTTPS when given a certificate and key (DESIGN §4); clients refuse plain http
        # to anything but loopback.
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = _Server(config)
    server.run(sockets=[sock])
    if not server.started:
        print("error: the relay failed to start; see the log above", file=sys.stderr)
        return 1
    log.info("relay stopped")
    return 0


def _rotate_sealed_key(data: str | None) -> int:
    from imsg_relay.sealed import KEYS_FILE, SealedKeyFileError, key_chain, rotate_keys

    try:
        settings = Settings.from_env(data_dir=data)
        keys = rotate_keys(Path(settings.sealed_keys_file or settings.data_dir / KEYS_FILE))
    except (SettingsError, SealedKeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    newest = key_chain(keys)[-1]
    print(f"sealed-sender key {newest['key_id']} added ({len(keys)} in the chain); restart the relay to sign with it")
    return 0


def _version() -> str:
    """The installed distribution's version (the one in server/pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imsg-relay")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imsg-relay", description="the imsg relay server")
    parser.add_argument("--version", action="version", version=f"imsg-relay {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the relay API over HTTP")
    p.add_argument("--host", help="address to bind (IMSG_RELAY_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port, 0 for any free one (IMSG_RELAY_PORT, default 8787)")
    p.add_argument("--data", help="data directory (IMSG_RELAY_DATA)")
    p.add_argument(
        "--tls-cert",
        default=os.environ.get("IMSG_RELAY_TLS_CERT"),
        help="PEM certificate (chain): serve HTTPS (IMSG_RELAY_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=os.environ.get("IMSG_RELAY_TLS_KEY"),
        help="PEM private key for --tls-cert (IMSG_RELAY_TLS_KEY)",
    )
    p.add_argument(
        "--verifier",
        help="how handles are verified: smtp, sms-webhook, file:PATH or none "
        "(IMSG_RELAY_VERIFIER, default none: handles are claimed unverified)",
    )
    p.add_argument("--smtp-host", help="SMTP server for --verifier smtp (IMSG_RELAY_SMTP_HOST)")
    p.add_argument("--smtp-port", type=int, help="its port (IMSG_RELAY_SMTP_PORT, default 587)")
    p.add_argument(
        "--smtp-tls",
        choices=["starttls", "tls", "none"],
        help="STARTTLS, implicit TLS, or none on loopback (IMSG_RELAY_SMTP_TLS)",
    )
    p.add_argument(
        "--smtp-user", help="SMTP login (IMSG_RELAY_SMTP_USER; the password only as IMSG_RELAY_SMTP_PASSWORD)"
    )
    p.add_argument("--smtp-from", help="From: address of code mails (IMSG_RELAY_SMTP_FROM)")
    p.add_argument("--webhook-url", help="SMS gateway URL for --verifier sms-webhook (IMSG_RELAY_WEBHOOK_URL)")
    p.add_argument(
        "--webhook-template", help="request body; {handle} and {code} are filled in (IMSG_RELAY_WEBHOOK_TEMPLATE)"
    )
    p.add_argument(
        "--webhook-content-type",
        help="its Content-Type (IMSG_RELAY_WEBHOOK_CONTENT_TYPE, "
        "default application/json; the Authorization header only as "
        "IMSG_RELAY_WEBHOOK_AUTHORIZATION)",
    )
    p.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level"
    )
    r = sub.add_parser(
        "rotate-sealed-key",
        help="add a sender-certificate signing key, endorsed by the current one "
        "(restart the relay's workers to use it)",
    )
    r.add_argument("--data", help="data directory (IMSG_RELAY_DATA)")
    args = parser.parse_args(argv)
    if args.command == "rotate-sealed-key":
        return _rotate_sealed_key(args.data)
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data,
            verifier=args.verifier,
            smtp_host=args.smtp_host,
            smtp_port=args.smtp_port,
            smtp_tls=args.smtp_tls,
            smtp_user=args.smtp_user,
            smtp_from=args.smtp_from,
            webhook_url=args.webhook_url,
            webhook_template=args.webhook_template,
            webhook_content_type=args.webhook_content_type,
        )
    except (SettingsError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    for path in (args.tls_cert, args.tls_key):
        if path and not os.path.isfile(path):
            print(f"error: no such file: {path}", file=sys.stderr)
            return 2
    if args.command == "serve":
        return serve(settings, args.log_level, (args.tls_cert, args.tls_key) if args.tls_cert else None)
    return 2


if __name__ == "__main__":
    sys.exit(main())
