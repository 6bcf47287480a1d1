"""The real binary as a newcomer meets it: /api/points, the seed endpoints, and check-config on a broken mapping."""
import json
import pathlib
import subprocess
import urllib.error
import urllib.request

from conftest import castpoint_bin, ROOT


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def post(url, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_points_and_seed_endpoints(server):
    pts = get(server.http_base + "/api/points")
    assert len(pts) == 23
    by_id = {p["id"]: p for p in pts}
    assert by_id["active_streams"]["addresses"]["bacnet"] == "AI0"
    assert by_id["stream_enable"]["addresses"]["modbus"] == ["00001"]
    assert all(p["status"] in ("ok", "stale", "fault", "unavailable", "overridden") for p in pts)
    assert get(server.http_base + "/api/streams")["id"] == "active_streams"
    status, body = post(server.http_base + "/api/stream/stop")
    assert status == 200 and body["value"] is False
    assert get(server.http_base + "/api/points/stream_enable")["value"] is False
    status, body = post(server.http_base + "/api/stream/start")
    assert status == 200 and get(server.http_base + "/api/points/stream_enable")["value"] is True
    status, body = post(server.http_base + "/api/points/input_select", {"value": 1000})
    assert status == 422 and "range" in body["error"]


def test_check_config_names_file_and_key(tmp_path):
    bad = (ROOT / "mappings" / "modbus.toml").read_text().replace(
        'point = "uptime"', 'point = "uptme"', 1)
    (tmp_path / "modbus.toml").write_text(bad)
    cfg = tmp_path / "castpoint.toml"
    cfg.write_text('[mappings]\nmodbus = "modbus.toml"\n')
    r = subprocess.run([castpoint_bin(), "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "modbus.toml" in lines[0] and "].point" in lines[0] and "uptme" in lines[0]
    ok = subprocess.run([castpoint_bin(), "check-config"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "23 points" in ok.stdout
