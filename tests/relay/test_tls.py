"""The relay serves HTTPS when given a certificate and key, and the client talks to it
(trusting the certificate through SSL_CERT_FILE, as any httpx program does)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imsg test relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_relay_serves_https_and_the_client_uses_it(tmp_path):
    cert, key = _self_signed(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imsg_relay.cli",
            "serve",
            "--port",
            "0",
            "--data",
            str(tmp_path / "data"),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("imsg-relay listening on https://127.0.0.1:"), line
        url = line.split()[-1]
        # An untrusted certificate is refused...
        try:
            httpx.get(url + "/v1/health", timeout=5)
            raise AssertionError("a self-signed certificate must not be trusted by default")
        except httpx.ConnectError:
            pass
        # ...and trusted when the operator says so.
        assert (
            httpx.get(url + "/v1/health", verify=ssl.create_default_context(cafile=str(cert)), timeout=5).json()[
                "status"
            ]
            == "ok"
        )
        env = dict(os.environ, SSL_CERT_FILE=str(cert))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imsg_cli.main",
                "--home",
                str(tmp_path / "alice"),
                "--relay",
                url,
                "--json",
                "init",
                "alice@example.com",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert '"handle":"alice@example.com"' in out.stdout
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_cert_without_key_is_a_usage_error(tmp_path):
    cert, _ = _self_signed(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "imsg_relay.cli", "serve", "--tls-cert", str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "go together" in out.stderr


def test_plain_http_to_a_remote_relay_is_refused(tmp_path):
    start = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "imsg_cli.main",
            "--home",
            str(tmp_path / "a"),
            "--relay",
            "http://relay.example.org",
            "init",
            "a@example.com",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "plain http" in out.stderr
    assert time.monotonic() - start < 20
