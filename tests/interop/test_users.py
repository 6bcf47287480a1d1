"""The shared user store: a user added with `castpoint user add` logs in to Haystack with phable (SCRAM) and to the REST API (JWT)."""
import json
import subprocess
import urllib.error
import urllib.request

from phable import open_haystack_client

from conftest import Server, castpoint_bin


def post(url, body, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_cli_user_logs_in_over_scram_and_jwt():
    s = Server()
    try:
        add = subprocess.run(
            [castpoint_bin(), "user", "add", "ops1", "--role", "operator", "--data-dir", s.data],
            input="s3cret-password\n", capture_output=True, text=True, timeout=30)
        assert add.returncode == 0, add.stderr
        listed = subprocess.run([castpoint_bin(), "user", "list", "--data-dir", s.data],
                                capture_output=True, text=True, timeout=30)
        assert "ops1\toperator" in listed.stdout
        # Haystack SCRAM with phable, then a pointWrite as that user.
        with open_haystack_client(s.http_base + "/api/haystack", "ops1", "s3cret-password") as c:
            assert c.about()["productName"] == "castpoint"
        # REST: writes now need a token; the CLI user gets one.
        status, _ = post(s.http_base + "/api/points/recording_enable", {"value": True})
        assert status == 401
        status, body = post(s.http_base + "/api/auth/login",
                            {"username": "ops1", "password": "s3cret-password"})
        assert status == 200 and body["role"] == "operator"
        status, body = post(s.http_base + "/api/points/recording_enable", {"value": True},
                            token=body["token"])
        assert status == 200 and body["value"] is True
        rm = subprocess.run([castpoint_bin(), "user", "remove", "ops1", "--data-dir", s.data],
                            capture_output=True, text=True, timeout=30)
        assert rm.returncode == 0
    finally:
        s.stop()


def get(url, token=None, api_key=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    if api_key:
        req.add_header("x-api-key", api_key)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_cli_api_key_is_printed_once_used_and_revoked():
    s = Server()
    try:
        add = subprocess.run(
            [castpoint_bin(), "apikey", "add", "ci", "--role", "operator", "--data-dir", s.data],
            capture_output=True, text=True, timeout=30)
        assert add.returncode == 0, add.stderr
        key = add.stdout.strip()
        assert key.startswith("cpk_") and len(key) > 40
        listed = subprocess.run([castpoint_bin(), "apikey", "list", "--data-dir", s.data],
                                capture_output=True, text=True, timeout=30)
        assert listed.stdout.startswith("ci\toperator\t") and key not in listed.stdout
        # A key exists, so the API is closed: anonymous writes are refused,
        # the key writes (as a bearer or as X-API-Key) within its role.
        status, _ = post(s.http_base + "/api/points/recording_enable", {"value": True})
        assert status == 401
        status, body = post(s.http_base + "/api/points/recording_enable", {"value": True},
                            token=key)
        assert status == 200 and body["value"] is True
        status, _ = get(s.http_base + "/api/apikeys", api_key=key)
        assert status == 403  # admin only
        dup = subprocess.run(
            [castpoint_bin(), "apikey", "add", "ci", "--role", "admin", "--data-dir", s.data],
            capture_output=True, text=True, timeout=30)
        assert dup.returncode != 0 and "exists" in dup.stderr
        rm = subprocess.run([castpoint_bin(), "apikey", "remove", "ci", "--data-dir", s.data],
                            capture_output=True, text=True, timeout=30)
        assert rm.returncode == 0, rm.stderr
        status, _ = post(s.http_base + "/api/points/recording_enable", {"value": False},
                         token=key)
        assert status == 401
    finally:
        s.stop()
