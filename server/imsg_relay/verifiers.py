"""How the relay delivers verification codes: `--verifier smtp|sms-webhook|file:PATH|none`.

A verifier gets the handle in the clear for the moment it sends the code; nothing here
logs or keeps it. `none` sends nothing: handles are then claimed unverified, and contacts
see them marked so.
"""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from imsg_relay.settings import Settings


class VerifierError(Exception):
    """the verification code could not be sent"""


class Verifier(Protocol):
    verifies: bool

    async def send(self, handle: str, code: str) -> None: ...


@dataclass(frozen=True)
class NoVerifier:
    verifies = False

    async def send(self, handle: str, code: str) -> None:  # pragma: no cover - never called
        raise VerifierError("this relay does not verify handles")


@dataclass(frozen=True)
class FileVerifier:
    """One line `HANDLE CODE` appended per code: a local relay, scripts and tests."""

    path: Path
    verifies = True

    async def send(self, handle: str, code: str) -> None:
        def write() -> None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{handle} {code}\n".encode())
            finally:
                os.close(fd)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise VerifierError(f"cannot write to the code file: {exc.strerror}") from None


@dataclass(frozen=True)
class SmtpVerifier:
    host: str
    port: int
    sender: str
    tls: str = "starttls"  # starttls | tls | none
    username: str | None = None
    password: str | None = None
    timeout: float = 20.0
    verifies = True

    async def send(self, handle: str, code: str) -> None:
        if "@" not in handle:
            raise VerifierError("this relay verifies e-mail addresses only (its verifier is smtp)")
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = handle
        msg["Subject"] = f"imsg code {code}"
        msg.set_content(
            f"Your imsg verification code is {code}\n\nIt expires in 10 minutes. "
            "If you did not ask for it, ignore this message.\n"
        )
        try:
            await asyncio.to_thread(self._deliver, msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise VerifierError(f"smtp delivery failed ({type(exc).__name__})") from None

    def _deliver(self, msg: EmailMessage) -> None:
        context = ssl.create_default_context()
        if self.tls == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            server = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with server:
            if self.tls == "starttls":
                server.starttls(context=context)
            if self.username:
                server.login(self.username, self.password or "")
            server.send_message(msg)


@dataclass(frozen=True)
class WebhookVerifier:
    """An HTTP POST to an SMS gateway. The body is `template` with {handle} and {code}
    replaced, each JSON-escaped when the content type is JSON."""

    url: str
    template: str = '{"to": "{handle}", "text": "Your imsg code is {code}"}'
    content_type: str = "application/json"
    authorization: str | None = None
    timeout: float = 20.0
    verifies = True

    async def send(self, handle: str, code: str) -> None:
        import httpx

        if "@" in handle:
            raise VerifierError("this relay verifies phone numbers only (its verifier is sms-webhook)")
        if "json" in self.content_type:
            fill = {"handle": json.dumps(handle)[1:-1], "code": json.dumps(code)[1:-1]}
        else:
            fill = {"handle": handle, "code": code}
        body = self.template.replace("{handle}", fill["handle"]).replace("{code}", fill["code"])
        headers = {"Content-Type": self.content_type}
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                r = await client.post(self.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            raise VerifierError(f"sms gateway unreachable ({type(exc).__name__})") from None
        if r.status_code >= 300:
            raise VerifierError(f"sms gateway answered {r.status_code}")


def build_verifier(settings: Settings) -> Verifier:
    """The verifier the settings name (`verifier` = smtp | sms-webhook | file:PATH | none)."""
    spec = settings.verifier
    if spec == "none":
        return NoVerifier()
    if spec.startswith("file:"):
        return FileVerifier(Path(spec[5:]).expanduser())
    if spec == "smtp":
        return SmtpVerifier(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_from,
            settings.smtp_tls,
            settings.smtp_user,
            settings.smtp_password,
        )
    if spec == "sms-webhook":
        if not settings.webhook_url:  # Settings refuses this too; kept so the type is str
            raise ValueError("the sms-webhook verifier needs a webhook url")
        return WebhookVerifier(
            settings.webhook_url,
            settings.webhook_template,
            settings.webhook_content_type,
            settings.webhook_authorization,
        )
    raise ValueError(f"unknown verifier {spec!r}")
