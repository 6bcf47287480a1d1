"""The engineering exports over HTTP (/api/export/*) are the CLI's exports (`castpoint export ede|modbus-map`) byte for byte for a config's routes, for a viewer and above; the EDE follows the routes the device serves (one created over REST included)."""
import json
import subprocess
import time
import urllib.error
import urllib.request

from conftest import Server, base_config_text, castpoint_bin
from test_users import login


def fetch(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def cli(cfg, *args):
    r = subprocess.run([castpoint_bin(), "export", *args, "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_exports_are_the_cli_exports_for_a_viewer(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(base_config_text())
    s = Server(config=cfg)
    try:
        add = subprocess.run([castpoint_bin(), "user", "add", "vw", "--role", "viewer", "--data-dir", s.data],
                             input="viewer-password-1\n", capture_output=True, text=True, timeout=30)
        assert add.returncode == 0, add.stderr
        vw = login(s.http_base, "vw", "viewer-password-1")
        for path, args, ctype in (("/api/export/ede.csv", ("ede",), "text/csv"),
                                  ("/api/export/modbus-map.csv", ("modbus-map", "--format", "csv"), "text/csv"),
                                  ("/api/export/modbus-map.md", ("modbus-map",), "text/markdown")):
            status, headers, text = fetch(s.http_base + path, vw)
            assert status == 200, (path, text)
            assert headers["content-type"].startswith(ctype), headers["content-type"]
            assert headers["content-disposition"].startswith("attachment; filename="), path
            assert text == cli(cfg, *args), path
        # The state texts: the second file `export ede --out` writes.
        out = tmp_path / "ede"
        out.mkdir()
        cli(cfg, "ede", "--out", str(out))
        states = next(out.glob("*_StateTexts.csv")).read_text()
        status, headers, text = fetch(s.http_base + "/api/export/ede-states.csv", vw)
        assert status == 200 and text == states
        assert headers["content-disposition"].endswith('_StateTexts.csv"')
        # A bad credential is refused.
        status, _, _ = fetch(s.http_base + "/api/export/ede.csv", "not-a-token")
        assert status == 401
        # A route created over REST is in the device's EDE (its view and
        # objects in the slot it holds), as BACnet serves it; the CLI,
        # reading only the config, cannot know it. Before, the API served
        # the config's export and left the route out.
        add = subprocess.run([castpoint_bin(), "user", "add", "ad", "--role", "admin", "--data-dir", s.data],
                             input="admin-password-1\n", capture_output=True, text=True, timeout=30)
        assert add.returncode == 0, add.stderr
        ad = login(s.http_base, "ad", "admin-password-1")
        req = urllib.request.Request(
            s.http_base + "/api/routes", method="POST",
            data=json.dumps({"name": "four",
                             "inputs": [{"name": "main", "type": "generator", "bitrate": 1000000}],
                             "outputs": [{"name": "web", "type": "http", "path": "four"}]}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {ad}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201
        deadline = time.time() + 10
        while True:
            status, _, text = fetch(s.http_base + "/api/export/ede.csv", vw)
            views = [l for l in text.splitlines() if "structured view: route four (slot" in l]
            if views or time.time() > deadline:
                break
            time.sleep(0.1)
        assert status == 200 and len(views) == 1, text[-2000:]
        slot = int(views[0].split(";")[0].split(".")[1])
        assert f"route.{slot}.route_enable;" in text
        assert "route four" not in cli(cfg, "ede")
    finally:
        s.stop()
