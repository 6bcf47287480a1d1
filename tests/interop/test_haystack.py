"""Haystack interop: phable (SCRAM login, about, read, his_read, point_write, watch) and hszinc parsing every Zinc grid castpoint emits."""
import base64
import datetime
import hashlib
import hmac
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from zoneinfo import ZoneInfo

import hszinc
import pytest
from phable import (AuthError, CallError, DateRange, DateTimeRange, Grid, GridCol,
                    Number, Ref, open_haystack_client)
from phable.auth.scram import ScramScheme

from conftest import base_config_text, ROOT, Server

USERS = {"op": ("operator", "op-pass"), "viewer": ("viewer", "view-pass")}


def user_entry(name, role, password, iterations=4096):
    """A [[haystack.user]] entry, derived here independently of castpoint."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return (f'[[haystack.user]]\nname = "{name}"\nrole = "{role}"\nsalt = "{b64(salt)}"\n'
            f'iterations = {iterations}\nstored_key = "{b64(stored)}"\nserver_key = "{b64(server)}"\n')


@pytest.fixture(scope="module")
def hs():
    base = base_config_text()
    # [[haystack.user]] entries can follow any table; telemetry off keeps
    # values still while the test compares them.
    cfg = (base + "\n" + "".join(user_entry(n, r, p) for n, (r, p) in USERS.items())
           + "\n[telemetry]\nenabled = false\n")
    d = tempfile.mkdtemp(prefix="castpoint-hs-")
    path = pathlib.Path(d) / "castpoint.toml"
    path.write_text(cfg)
    s = Server(config=path)
    s.uri = s.http_base + "/api/haystack"
    yield s
    s.stop()


def client(hs, user="op", content_type="json"):
    return open_haystack_client(hs.uri, user, USERS[user][1], content_type=content_type)


def token(hs, user="op"):
    return ScramScheme(hs.uri, user, USERS[user][1], "text/zinc").get_auth_token()


def get_zinc(hs, tok, op, body=None):
    """Raw Zinc response text of an op (GET, or POST of a Zinc grid)."""
    req = urllib.request.Request(
        f"{hs.uri}/{op}", data=body.encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"BEARER authToken={tok}", "Accept": "text/zinc",
                 "Content-Type": "text/zinc"})
    with urllib.request.urlopen(req) as r:
        assert r.headers["Content-Type"].startswith("text/zinc")
        return r.read().decode()


def test_scram_login_about_json_and_zinc(hs):
    for ct in ("json", "zinc"):
        with client(hs, content_type=ct) as c:
            about = c.about()
            assert about["productName"] == "castpoint"
            assert about["haystackVersion"] == "4.0"
            assert about["userName"] == "op"


def test_wrong_password_is_refused(hs):
    for user, pw in (("op", "wrong"), ("mallory", "x")):
        with pytest.raises(AuthError):
            with open_haystack_client(hs.uri, user, pw):
                pass


def test_read_by_filter_and_ids(hs):
    with client(hs, "viewer") as c:
        pts = c.read_all("point")
        assert len(pts.rows) == 23
        # GPU Usage has no source with telemetry off: unknown, no curVal.
        rec = c.read('point and bacnetCur == "AI5"')
        assert rec["id"].val == "gpu_usage"
        assert rec["dis"] == "GPU Usage"
        assert "sensor" in rec and "his" in rec and rec["kind"] == "Number"
        assert rec["modbusAddr"].startswith("30006")
        assert rec["equipRef"].val == "streaming-server"
        assert rec["curStatus"] == "unknown" and "curErr" in rec and "curVal" not in rec
        bitrate = c.read('castpointId == "total_bitrate_out"')
        assert bitrate["unit"] == "_Gbps"
        assert bitrate["maxVal"] == Number(100, "_Gbps")
        assert len(c.read_all("equipRef->siteRef->site and (cmd or sp)").rows) == 6
        assert len(c.read_all("point and not writable").rows) == 17
        assert len(c.read_all('enum and curVal == "OK"').rows) == 1  # communication_status
        g = c.read_by_ids([Ref("stream_enable"), Ref("site"), Ref("streaming-server")])
        assert [r["id"].val for r in g.rows] == ["stream_enable", "site", "streaming-server"]
        assert g.rows[0]["curVal"] is True and "writable" in g.rows[0]
        with pytest.raises(CallError):
            c.read_all("point and (")


def test_his_read(hs):
    # Communication Status is set (and recorded) when castpoint starts.
    rid = Ref("communication_status")
    today = datetime.date.today()
    utc = ZoneInfo("UTC")
    with client(hs, "viewer") as c:
        for rng in (today, DateRange(today - datetime.timedelta(days=1), today),
                    DateTimeRange(datetime.datetime.now(utc) - datetime.timedelta(hours=1),
                                  datetime.datetime.now(utc) + datetime.timedelta(minutes=1))):
            g = c.his_read_by_id(rid, rng)
            assert g.meta["id"].val == "communication_status"
            assert len(g.rows) >= 1, rng
            assert g.rows[0]["val"] == "OK"
            assert isinstance(g.rows[0]["ts"], datetime.datetime)
        y = c.his_read_by_id(rid, today - datetime.timedelta(days=1))
        assert y.rows == []


def test_point_write_and_array(hs):
    with client(hs, "op") as c:
        c.point_write(Ref("output_profile"), 8, Number(3))
        arr = c.point_write_array(Ref("output_profile"))
        assert len(arr.rows) == 17
        assert arr.rows[7]["level"] == Number(8) and arr.rows[7]["val"] == Number(3)
        assert "(op)" in arr.rows[7]["who"]
        assert c.read_by_id(Ref("output_profile"))["curVal"] == Number(3)
        c.point_write(Ref("output_profile"), 8)  # relinquish
        assert c.read_by_id(Ref("output_profile"))["curVal"] == Number(0)
        with pytest.raises(CallError):
            c.point_write(Ref("output_profile"), 8, Number(1000))
    with client(hs, "viewer") as c, pytest.raises(CallError):
        c.point_write(Ref("output_profile"), 8, Number(1))


def test_watch(hs):
    with client(hs, "op") as c:
        sub = c.call("watchSub", Grid(meta={"ver": "3.0", "watchDis": "interop", "lease": Number(60, "s")},
                                      cols=[GridCol("id")],
                                      rows=[{"id": Ref("recording_enable")}, {"id": Ref("cpu_usage")}]))
        wid = sub.meta["watchId"]
        assert len(sub.rows) == 2
        poll = lambda refresh=False: c.call("watchPoll", Grid(
            meta={"ver": "3.0", "watchId": wid, **({"refresh": __import__("phable").Marker()} if refresh else {})},
            cols=[GridCol("empty")], rows=[]))
        assert poll().rows == []
        c.point_write(Ref("recording_enable"), 10, True)
        changed = poll().rows
        assert [r["id"].val for r in changed] == ["recording_enable"]
        assert changed[0]["curVal"] is True
        assert len(poll(refresh=True).rows) == 2
        c.point_write(Ref("recording_enable"), 10)
        c.call("watchUnsub", Grid(meta={"ver": "3.0", "watchId": wid, "close": __import__("phable").Marker()},
                                  cols=[GridCol("empty")], rows=[]))
        with pytest.raises(CallError):
            poll()


def test_hszinc_parses_every_grid(hs):
    tok = token(hs, "op")
    sub = get_zinc(hs, tok, "watchSub", 'ver:"3.0" watchDis:"z" lease:30s\nid\n@cpu_usage\n@nope\n')
    wid = hszinc.parse(sub, mode=hszinc.MODE_ZINC).metadata["watchId"]
    grids = {
        "about": get_zinc(hs, tok, "about"),
        "ops": get_zinc(hs, tok, "ops"),
        "formats": get_zinc(hs, tok, "formats"),
        "filetypes": get_zinc(hs, tok, "filetypes"),
        "read all": get_zinc(hs, tok, "read?filter=point+or+site+or+equip"),
        "read ids": get_zinc(hs, tok, "read", 'ver:"3.0"\nid\n@site\n@nope\n'),
        "read none": get_zinc(hs, tok, "read?filter=nothing"),
        "nav": get_zinc(hs, tok, "nav"),
        "nav site": get_zinc(hs, tok, "nav?navId=@site"),
        "nav equip": get_zinc(hs, tok, "nav?navId=@streaming-server"),
        "pointWrite array": get_zinc(hs, tok, "pointWrite", 'ver:"3.0"\nid\n@stream_enable\n'),
        "pointWrite": get_zinc(hs, tok, "pointWrite", 'ver:"3.0"\nid,level,val\n@transcode_enable,9,T\n'),
        "hisRead": get_zinc(hs, tok, "hisRead?id=@communication_status&range=today"),
        "hisRead multi": get_zinc(hs, tok, "hisRead", 'ver:"3.0" range:"today"\nid\n@communication_status\n@cpu_usage\n'),
        "watchSub": sub,
        "watchPoll": get_zinc(hs, tok, "watchPoll", f'ver:"3.0" watchId:"{wid}" refresh\nempty\n'),
        "watchUnsub": get_zinc(hs, tok, "watchUnsub", f'ver:"3.0" watchId:"{wid}" close\nempty\n'),
        "invokeAction": get_zinc(hs, tok, "invokeAction", 'ver:"3.0" id:@streaming-server action:"restart"\nempty\n'),
        "error filter": get_zinc(hs, tok, "read?filter=%28"),
        "error zinc": get_zinc(hs, tok, "read", 'ver:"3.0"\nfilter\n"open\n'),
        "close": get_zinc(hs, tok, "close", 'ver:"3.0"\nempty\n'),
    }
    for name, z in grids.items():
        g = hszinc.parse(z, mode=hszinc.MODE_ZINC)
        assert g is not None, name
        if name.startswith("error"):
            assert "err" in g.metadata, name
        else:
            assert "err" not in g.metadata, (name, z)
    assert len(hszinc.parse(grids["read all"], mode=hszinc.MODE_ZINC)) == 25
    assert len(hszinc.parse(grids["pointWrite array"], mode=hszinc.MODE_ZINC)) == 17
    # The closed session's token is refused (403 -> log in again).
    with pytest.raises(urllib.error.HTTPError) as e:
        get_zinc(hs, tok, "about")
    assert e.value.code == 403


def test_anonymous_read_mode():
    d = tempfile.mkdtemp(prefix="castpoint-hs-anon-")
    path = pathlib.Path(d) / "castpoint.toml"
    base = base_config_text()
    assert "\n[haystack]\n" in base
    path.write_text(base.replace("\n[haystack]\n", "\n[haystack]\nanonymous_read = true\n", 1))
    s = Server(config=path)
    try:
        uri = s.http_base + "/api/haystack"
        with urllib.request.urlopen(f"{uri}/read?filter=point") as r:
            assert len(hszinc.parse(r.read().decode(), mode=hszinc.MODE_ZINC)) == 23
        req = urllib.request.Request(f"{uri}/pointWrite", method="POST",
                                     data=b'ver:"3.0"\nid,level,val\n@stream_enable,8,F\n',
                                     headers={"Content-Type": "text/zinc"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 401
    finally:
        s.stop()
