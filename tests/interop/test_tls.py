"""HTTPS interop: the real castpoint binary with `[http] tls_cert`/`tls_key` (certificates made by `openssl req`), Python's ssl client, and certificate reload on SIGHUP."""
import http.client
import signal
import ssl
import subprocess
import time

import pytest

from conftest import Server


def make_cert(d, name):
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert.read_text(), key.read_text()


def context(cafile_text):
    return ssl.create_default_context(cadata=cafile_text)


def get_health(port, cafile_text, conn=None):
    c = conn or http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                            context=context(cafile_text))
    c.request("GET", "/health")
    r = c.getresponse()
    r.read()
    return r.status, c


@pytest.fixture
def https_server(tmp_path):
    a_cert, a_key = make_cert(tmp_path, "a")
    (tmp_path / "server.crt").write_text(a_cert)
    (tmp_path / "server.key").write_text(a_key)
    (tmp_path / "castpoint.toml").write_text(
        '[telemetry]\nenabled = false\n'
        '[http]\ntls_cert = "server.crt"\ntls_key = "server.key"\n')
    s = Server(config=tmp_path / "castpoint.toml")
    yield s, tmp_path, a_cert
    s.stop()


def test_https_health_and_certificate_reload_on_sighup(https_server):
    server, d, a_cert = https_server
    port = server.addrs["http"][1]
    status, kept = get_health(port, a_cert)
    assert status == 200
    # An HTTPS client that does not trust the certificate is refused.
    b_cert, b_key = make_cert(d, "b")
    with pytest.raises(ssl.SSLError):
        get_health(port, b_cert)
    # Renew: new files in place, then SIGHUP.
    (d / "server.crt").write_text(b_cert)
    (d / "server.key").write_text(b_key)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while True:
        try:
            status, _ = get_health(port, b_cert)
            break
        except ssl.SSLError:
            assert time.time() < deadline, "new certificate not served 10 s after SIGHUP"
            time.sleep(0.1)
    assert status == 200
    assert server.proc.poll() is None, "SIGHUP must not stop castpoint"
    # New connections no longer get the old certificate...
    with pytest.raises(ssl.SSLError):
        get_health(port, a_cert)
    # ...and the connection opened before the reload still works.
    status, _ = get_health(port, a_cert, conn=kept)
    assert status == 200
    kept.close()


def test_sighup_without_https_does_not_stop_castpoint(server):
    server.proc.send_signal(signal.SIGHUP)
    # The default action of SIGHUP would end the process at once.
    with pytest.raises(subprocess.TimeoutExpired):
        server.proc.wait(timeout=2)
    c = http.client.HTTPConnection(*server.addrs["http"], timeout=5)
    c.request("GET", "/health")
    assert c.getresponse().status == 200
