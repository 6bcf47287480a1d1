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


def call(method, url, body=None, token=None):
    """Any method; (status, JSON body or None)."""
    req = urllib.request.Request(url, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def login(base, user, password):
    status, body = post(base + "/api/auth/login", {"username": user, "password": password})
    return body["token"] if status == 200 else status


def test_users_api_adds_changes_resets_and_removes_users_like_the_cli():
    """/api/users over real HTTP: admin only; the CLI's validation; a role change and a password reset revoke
    the user's tokens; the last admin is kept; every change is audited without the password; the CLI sees
    what the API stored (one store)."""
    s = Server()
    try:
        add = subprocess.run(
            [castpoint_bin(), "user", "add", "root", "--role", "admin", "--data-dir", s.data],
            input="root-password-1\n", capture_output=True, text=True, timeout=30)
        assert add.returncode == 0, add.stderr
        base = s.http_base
        adm = login(base, "root", "root-password-1")
        assert call("GET", base + "/api/users", token=adm) == (200, {"users": [{"name": "root", "role": "admin"}]})
        # Added over the API: logs in over REST and Haystack SCRAM, listed by the CLI.
        assert call("POST", base + "/api/users", {"name": "op.1", "role": "operator", "password": "op-password-1"},
                    token=adm) == (201, {"name": "op.1", "role": "operator"})
        listed = subprocess.run([castpoint_bin(), "user", "list", "--data-dir", s.data],
                                capture_output=True, text=True, timeout=30)
        assert "op.1\toperator" in listed.stdout
        with open_haystack_client(base + "/api/haystack", "op.1", "op-password-1") as c:
            assert c.about()["productName"] == "castpoint"
        op = login(base, "op.1", "op-password-1")
        # The CLI's own refusals, word for word; a duplicate; a bad role.
        status, body = call("POST", base + "/api/users", {"name": "x y", "role": "viewer", "password": "long-enough"}, token=adm)
        assert status == 422 and body["error"].startswith("user names are 1-64 characters"), body
        status, body = call("POST", base + "/api/users", {"name": "v", "role": "viewer", "password": "short"}, token=adm)
        assert status == 422 and body["error"] == "passwords need at least 8 characters", body
        assert call("POST", base + "/api/users", {"name": "op.1", "role": "viewer", "password": "long-enough"}, token=adm)[0] == 409
        assert call("POST", base + "/api/users", {"name": "v", "role": "root", "password": "long-enough"}, token=adm)[0] == 422
        assert call("POST", base + "/api/users", {"name": "v"}, token=adm)[0] == 400
        # Not for an operator, nor anonymous.
        assert call("GET", base + "/api/users", token=op)[0] == 403
        assert call("POST", base + "/api/users", {"name": "evil", "role": "admin", "password": "long-enough"}, token=op)[0] == 403
        assert call("DELETE", base + "/api/users/root")[0] == 401
        # Role change: the old token is revoked, the password still works.
        assert call("PUT", base + "/api/users/op.1", {"role": "viewer"}, token=adm) == (200, {"name": "op.1", "role": "viewer"})
        assert call("GET", base + "/api/points", token=op)[0] == 401
        vw = login(base, "op.1", "op-password-1")
        status, body = post(base + "/api/points/recording_enable", {"value": True}, token=vw)
        assert status == 403
        # Password reset: the old password no longer logs in.
        assert call("PUT", base + "/api/users/op.1", {"password": "new-password-2"}, token=adm)[0] == 200
        assert login(base, "op.1", "op-password-1") == 401
        assert isinstance(login(base, "op.1", "new-password-2"), str)
        assert call("PUT", base + "/api/users/op.1", {"password": "short"}, token=adm)[0] == 422
        assert call("PUT", base + "/api/users/op.1", {}, token=adm)[0] == 400
        assert call("PUT", base + "/api/users/nobody", {"role": "admin"}, token=adm)[0] == 404
        # The last admin is neither removed nor demoted; with a second admin it may be.
        status, body = call("DELETE", base + "/api/users/root", token=adm)
        assert status == 409 and "last admin" in body["error"]
        assert call("PUT", base + "/api/users/root", {"role": "viewer"}, token=adm)[0] == 409
        assert call("PUT", base + "/api/users/op.1", {"role": "admin"}, token=adm)[0] == 200
        assert call("DELETE", base + "/api/users/op.1", token=adm) == (204, None)
        assert call("DELETE", base + "/api/users/op.1", token=adm)[0] == 404
        assert login(base, "op.1", "new-password-2") == 401
        # Audited (kind user), never with the password.
        status, body = call("GET", base + "/api/audit?kind=user&limit=100", token=adm)
        assert status == 200
        details = [e.get("detail", "") for e in body["events"]]
        assert {"add user op.1 (operator)", "change the role of user op.1 to viewer",
                "reset the password of user op.1", "remove user op.1"} <= set(details), details
        assert all(e["user"] == "root" for e in body["events"])
        assert not any("password-" in json.dumps(e) for e in body["events"])
    finally:
        s.stop()
