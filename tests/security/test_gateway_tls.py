"""The gateway serves HTTPS itself when exposed without a TLS-terminating ingress (issue 18
item 14): ``TUNEFLEET_GATEWAY_TLS_CERT_FILE``/``_KEY_FILE`` go to uvicorn, every answer carries
Strict-Transport-Security, and plain HTTP on that port gets no answer. A real ``python -m
gateway`` process with a self-signed certificate made here for 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess, service

TOKEN = "tls-test-token"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 (subject alternative name) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunefleet-test")])
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
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "gateway.crt", directory / "gateway.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def wait_https(gw: ServiceProcess, url: str, trust: ssl.SSLContext, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert gw.proc.poll() is None, f"gateway exited:\n{gw.log_text()[-4000:]}"
        try:
            if httpx.get(f"{url}/healthz", verify=trust, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"gateway not serving HTTPS after {timeout}s:\n{gw.log_text()[-4000:]}")


def gateway_env(cert: Path, key: Path) -> dict[str, str]:
    closed = f"http://127.0.0.1:{free_port()}"
    return {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_GATEWAY_REGISTRY_URL": closed,
        "TUNEFLEET_GATEWAY_TRAINING_URL": closed,
        "TUNEFLEET_GATEWAY_INFERENCE_URLS": f'["{closed}"]',
        "TUNEFLEET_GATEWAY_TLS_CERT_FILE": str(cert),
        "TUNEFLEET_GATEWAY_TLS_KEY_FILE": str(key),
    }


def test_gateway_process_serves_https_with_hsts(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    with service(
        "gateway", "gateway", tmp_path, gateway_env(cert, key), "TUNEFLEET_GATEWAY_PORT"
    ) as gw:
        https = gw.url.replace("http://", "https://")
        wait_https(gw, https, trust, timeout=120)
        answer = httpx.get(f"{https}/healthz", verify=trust, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains"
        )
        # The API behind it too (401 without a key: the envelope, over TLS, with HSTS).
        denied = httpx.get(f"{https}/v1/models", verify=trust, timeout=10)
        assert denied.status_code == 401
        assert "strict-transport-security" in denied.headers
        # An untrusted client refuses the certificate: it is really TLS, not a fallback.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{https}/healthz", timeout=10)
        # Plain HTTP on the TLS port: no HTTP answer at all.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{gw.url}/healthz", timeout=10)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    env = gateway_env(cert, tmp_path / "unused")
    env.pop("TUNEFLEET_GATEWAY_TLS_KEY_FILE")
    out = subprocess.run(
        [sys.executable, "-c", "from gateway.__main__ import main; main()"],
        env={**os.environ, "TUNEFLEET_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "TUNEFLEET_GATEWAY_TLS_KEY_FILE" in out.stdout + out.stderr
