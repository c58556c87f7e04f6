"""Redis over TLS (rediss://): certificates checked unless the URL says otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, skip_or_fail, wait_for

pytestmark = pytest.mark.fault

PUBLISH = """
import sys
from workers.brokers.broker import RedisBroker
from workers.celery_app import APPLY_EVENTS, make_celery
event = {"provider": "zapi", "message_id": sys.argv[2], "status": "sent", "raw_status": "SENT",
         "occurred_at": "2026-11-30T10:00:00+00:00", "received_at": "2026-11-30T10:00:00+00:00"}
RedisBroker().publish(make_celery(sys.argv[1]), APPLY_EVENTS, [event], task_id=sys.argv[2],
                      summary="tls", timeout=2)
"""


@pytest.fixture
def tls_redis(tmp_path: Path):
    """A TLS-only redis-server with a self-signed certificate (Debian's redis-server: the
    embedded Valkey is built without TLS)."""
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not server or not openssl:
        skip_or_fail("redis-server and openssl are needed for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    yield port, cert
    process.terminate()
    process.wait(timeout=10)


def publish(url: str, message_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PUBLISH, url, message_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rediss_checks_the_certificate_unless_told_otherwise(tls_redis, db, start_worker):
    port, cert = tls_redis
    bare = f"rediss://127.0.0.1:{port}/0"
    refused = publish(bare, "TLS-bare")
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    trusted = f"{bare}?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    assert publish(trusted, "TLS-ca").returncode == 0
    self_signed = f"{bare}?ssl_cert_reqs=none"  # a platform's self-signed certificate
    assert publish(self_signed, "TLS-none").returncode == 0
    start_worker(env={"BROKER_URL": trusted})
    wait_for(
        lambda: (
            db.execute("SELECT count(*) FROM messages WHERE message_id LIKE 'TLS-%'").fetchone()[0]
            == 2
        ),
        timeout=60,
    )
