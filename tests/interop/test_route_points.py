"""Route point blocks (issue 20) with a real Modbus peer: pymodbus reads and commands route 3's block at the addresses `castpoint export modbus-map` lists, and a free slot answers exception 02."""
import csv
import io
import json
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from pymodbus.client import ModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from conftest import Server, base_config_text, castpoint_bin


def route(name, slot=None):
    pin = f"slot = {slot}\n" if slot else ""
    return (f'[[route]]\nname = "{name}"\n{pin}'
            '[[route.input]]\nname = "main"\ntype = "generator"\nbitrate = 1000000\n'
            '[[route.input]]\nname = "backup"\ntype = "generator"\nbitrate = 1000000\n'
            f'[[route.output]]\nname = "web"\ntype = "http"\npath = "{name}"\n')


def config():
    text = base_config_text() + "\n[telemetry]\nenabled = true\n" + route("one") + route("three", 3)
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


def addresses(cfg):
    """point id -> (table, offset) from the exported map (CSV)."""
    out = subprocess.run([castpoint_bin(), "export", "modbus-map", "--format", "csv",
                          "--config", cfg], check=True, capture_output=True, text=True).stdout
    m = {}
    for row in csv.DictReader(io.StringIO(out)):
        if row["field"] == "value":
            m[row["point"].split(" ")[0]] = (row["table"], int(row["offset"]))
    return m


def rest(srv, path):
    with urllib.request.urlopen(srv.http_base + path, timeout=5) as r:
        return json.load(r)


def until(what, f, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if f():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_pymodbus_reads_and_commands_route_3_block_only():
    cfg = config()
    a = addresses(cfg)
    srv = Server(config=cfg)
    try:
        host, port = srv.addrs["modbus"]
        c = ModbusTcpClient(host, port=port, timeout=3)
        assert c.connect()
        status = a["route.3.route_status"][1]
        # Route 3 goes LIVE (1) on its own holding register.
        until("route 3 LIVE over Modbus",
              lambda: c.read_holding_registers(status, count=1).registers == [1])
        # Input Select of route 3: ordinal 3 = its second input ("backup").
        sel = a["route.3.input_select"][1]
        assert not c.write_register(sel, 3).isError()
        active = a["route.3.active_input"][1]
        until("route 3 forwards its backup input",
              lambda: c.read_holding_registers(active, count=1).registers == [2])
        assert rest(srv, "/api/routes/three/points/active_input")["state"] == "backup"
        # Route 1 (slot 1) untouched.
        assert rest(srv, "/api/routes/one/points/active_input")["state"] == "main"
        # An input the route does not have: exception 03.
        r = c.write_register(sel, 4)
        assert isinstance(r, ExceptionResponse) and r.exception_code == 3, r
        # Route Enable (coil) of route 3 off: STOPPED (3), route 1 stays LIVE.
        en = a["route.3.route_enable"][1]
        assert not c.write_coil(en, False).isError()
        until("route 3 STOPPED",
              lambda: c.read_holding_registers(status, count=1).registers == [3])
        one = a["route.1.route_status"][1]
        assert c.read_holding_registers(one, count=1).registers == [1]
        # Slot 2 is free: exception 02 on every table.
        free = a["route.2.route_status"][1]
        r = c.read_holding_registers(free, count=1)
        assert isinstance(r, ExceptionResponse) and r.exception_code == 2, r
        r = c.write_coil(a["route.2.route_enable"][1], True)
        assert isinstance(r, ExceptionResponse) and r.exception_code == 2, r
        # A whole block of input registers (measurements + qualities) in one read.
        base = a["route.3.input_bitrate"][1]
        n = sum(1 for k in a if k.startswith("route.3."))
        meas = ["input_bitrate", "output_bitrate", "viewers", "dropped_frames",
                "continuity_errors", "failover_count", "route_uptime"]
        rr = c.read_input_registers(base, count=2 * len(meas) + n)
        assert not rr.isError(), rr
        # The quality codes follow the measurements: all ok (0) once LIVE,
        # except what the route does not have (output 2.. unavailable, 3).
        q = rr.registers[2 * len(meas):]
        assert q[0] == 0 and 3 in q, q
        c.close()
    finally:
        srv.stop()


# ------------------------------------------------------------------ BACnet

import asyncio
import threading

from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.basetypes import ErrorType
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Enumerated, Null, ObjectIdentifier

DEVICE = 389001
STRIDE = 1000  # [route_points] bacnet_instance_stride default: slot s -> s*1000 + k


def bacnet_client():
    args = SimpleArgumentParser().parse_args(["--address", "127.0.0.1/8:0", "--instance", "998"])
    return Application.from_args(args)


def bacnet_addr(srv):
    return Address(f"127.0.0.1:{srv.addrs['bacnet'][1]}")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def post_json(srv, path, doc, method="POST"):
    req = urllib.request.Request(srv.http_base + path, method=method,
                                 data=json.dumps(doc).encode() if doc is not None else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


class TsCounter:
    """Bytes received from one HTTP-TS output, reconnecting while it is refused."""

    def __init__(self, url):
        self.url, self.bytes, self.stop = url, 0, False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    while not self.stop:
                        b = r.read(188 * 7)
                        if not b:
                            break
                        self.bytes += len(b)
            except OSError:
                time.sleep(0.1)

    def grows(self, within=10.0):
        start, end = self.bytes, time.time() + within
        while time.time() < end:
            if self.bytes > start + 188 * 50:
                return True
            time.sleep(0.1)
        return False


def _ts(rec):
    """A LogRecord's timestamp as (y, m, d, H, M, S, hundredths)."""
    d, t = rec.timestamp.date, rec.timestamp.time
    return (d[0] + 1900, d[1], d[2], t[0], t[1], t[2], t[3])


def _sample_ts(iso):
    """A history sample's RFC 3339 time, truncated to BACnet hundredths (UTC device)."""
    import datetime
    at = datetime.datetime.fromisoformat(iso).astimezone(datetime.timezone.utc)
    return (at.year, at.month, at.day, at.hour, at.minute, at.second, at.microsecond // 10_000)


async def _route_log(app, addr, inst):
    """Every record of Trend Log `inst`, by position (bacpypes3 requests
    ReadRange, it only cannot serve it)."""
    from bacpypes3.apdu import ReadRangeACK, ReadRangeRequest
    from bacpypes3.basetypes import LogRecord, Range, RangeByPosition
    from bacpypes3.constructeddata import ListOf
    req = ReadRangeRequest(objectIdentifier=ObjectIdentifier(f"trend-log,{inst}"),
                           propertyIdentifier="log-buffer",
                           range=Range(byPosition=RangeByPosition(referenceIndex=1, count=1000)))
    req.pduDestination = addr
    ack = await app.request(req)
    assert isinstance(ack, ReadRangeACK), ack
    assert ack.itemCount == 0 or list(ack.resultFlags)[1] == 1, "LAST_ITEM: the whole log in one answer"
    return list(ack.itemData.cast_out(ListOf(LogRecord)))


def test_bacpypes3_walks_route_views_commands_route_2_and_follows_rest_routes():
    """Issue 20 on BACnet: Structured Views walked from the top, every route
    object read with RPM ALL, Route Enable of route 2 at priority 8 stops
    route 2's HTTP-TS output only, and a route created / deleted over REST
    appears / disappears with a new Database_Revision within 2 s. Each
    route has a Trend Log per his measurement in its view, read with
    ReadRange against the route's REST history."""
    # Eight idle routes (UDP inputs nobody feeds) pinned to slots 20..27
    # make the Object_List 359 identifiers: larger than one APDU, so
    # bacpypes3 gets it segmented.
    idle = "".join(f'[[route]]\nname = "idle{n}"\nslot = {n}\n[[route.input]]\nname = "in"\n'
                   'type = "udp"\nbind = "127.0.0.1:0"\n' for n in range(20, 28))
    text = base_config_text() + "\n[telemetry]\nenabled = true\n" + route("one") + route("two") + idle
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    srv = Server(config=f.name)
    port = srv.addrs["bacnet"][1]
    # tshark dissects every frame of the run (when installed).
    cap, pcap = None, pathlib.Path(tempfile.mkdtemp(prefix="castpoint-rp-")) / "bacnet.pcap"
    if shutil.which("tshark"):
        cap = subprocess.Popen(["tshark", "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in cap.stderr:
            if "Capture started" in line:
                break
        time.sleep(0.5)
    dev = ObjectIdentifier(f"device,{DEVICE}")
    ts1 = TsCounter(srv.http_base + "/stream/one.ts")
    ts2 = TsCounter(srv.http_base + "/stream/two.ts")

    async def wait_for(what, f, timeout=15):
        end = time.time() + timeout
        while time.time() < end:
            v = await f()
            if v:
                return v
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    async def go():
        app = bacnet_client()
        addr = bacnet_addr(srv)
        try:
            # Both routes' views are in the Object_List once the server is up.
            async def both():
                ol = await app.read_property(addr, dev, "object-list")
                return ol if ObjectIdentifier("structured-view,2") in ol else None
            ol = await wait_for("route views in the Object_List", both)
            assert ObjectIdentifier("structured-view,1") in ol
            # 39 server objects (its view and 3 Notification Classes among
            # them) + 10 routes x (view + 31 objects + 7 Trend Logs).
            assert len(ol) == 39 + 10 * 39
            n = await app.read_property(addr, dev, "object-list", 0)
            assert n == len(ol)
            # The tree: server view -> its points and the route views ->
            # each route's objects.
            top = ObjectIdentifier("structured-view,0")
            assert str(await app.read_property(addr, top, "node-type")) == "equipment"
            subs = [s.objectIdentifier for s in await app.read_property(addr, top, "subordinate-list")]
            assert ObjectIdentifier("binary-output,0") in subs  # the seed's Stream Enable
            views = [s for s in subs if str(s[0]) == "structured-view"]
            assert views == [ObjectIdentifier(f"structured-view,{n}") for n in [1, 2] + list(range(20, 28))]
            names = {}
            route_objects = []
            for v in views:
                name = await app.read_property(addr, v, "object-name")
                assert str(await app.read_property(addr, v, "node-type")) == "equipment"
                members = [s.objectIdentifier for s in await app.read_property(addr, v, "subordinate-list")]
                slot = v[1]
                # The objects, then their Trend Logs.
                logs = [m for m in members if str(m[0]) == "trend-log"]
                members = [m for m in members if str(m[0]) != "trend-log"]
                # Instances slot*1000 + k, k in block order.
                assert [m[1] for m in members] == list(range(slot * STRIDE, slot * STRIDE + len(members)))
                assert len(members) == 31
                # TLn logs the object n: the 7 his measurements (AI k = 3..9).
                assert [m[1] for m in logs] == list(range(slot * STRIDE + 3, slot * STRIDE + 10))
                for m in logs:
                    assert m in ol
                    res = await app.read_property_multiple(addr, [m, ["all"]])
                    props = {str(p): val for (_, p, _, val) in res}
                    errors = [(str(p), str(val.errorCode)) for (_, p, _, val) in res
                              if isinstance(val, (ErrorType, ErrorRejectAbortNack))]
                    # Log_Buffer is ReadRange-only (Clause 12.25.14).
                    assert errors == [("log-buffer", "read-access-denied")], (m, errors)
                    ref = props["log-device-object-property"]
                    assert ref.objectIdentifier == ObjectIdentifier(f"analog-input,{m[1]}")
                    assert str(ref.propertyIdentifier) == "present-value"
                    assert props["buffer-size"] == 1000  # [trend_log] route_buffer_size
                    assert str(props["object-name"]).startswith(name + " ")
                    assert str(props["object-name"]).endswith(" Trend Log")
                    assert props["enable"] == 1
                for m in members:
                    assert m in ol
                    res = await app.read_property_multiple(addr, [m, ["all"]])
                    props = {str(p): val for (_, p, _, val) in res}
                    errors = [(p, val) for (_, p, _, val) in res
                              if isinstance(val, (ErrorType, ErrorRejectAbortNack))]
                    assert errors == [], (m, errors)
                    assert str(props["object-name"]).startswith(name + " "), props["object-name"]
                    assert "status-flags" in props and "reliability" in props
                    names[str(props["object-name"])] = m
                    route_objects.append(m)
            assert len(set(names)) == len(route_objects), "object names are unique"
            # Types per role/kind, units, the route's own input names.
            assert names["one Input Bitrate"] == ObjectIdentifier("analog-input,1003")
            assert str(await app.read_property(addr, names["one Input Bitrate"], "units")) != "no-units"
            sel = names["two Input Select"]
            assert str(sel[0]) == "multi-state-value"
            assert list(await app.read_property(addr, sel, "state-text"))[:3] == ["Auto", "main", "backup"]
            assert len(await app.read_property(addr, sel, "priority-array")) == 16
            en2 = names["two Route Enable"]
            assert en2 == ObjectIdentifier("binary-output,2010")
            # An unused output reads its N/A state with the fault flag.
            st = names["two Output Status 2"]
            assert list(await app.read_property(addr, st, "state-text"))[-1] == "N/A"
            assert int(await app.read_property(addr, st, "present-value")) == 4
            assert str(await app.read_property(addr, st, "reliability")) == "no-sensor"
            # COV on a route object: a REST write to route two's Output
            # Profile (AV2014) is notified within 1 s, as for the server's.
            prof = names["two Output Profile"]
            assert prof == ObjectIdentifier("analog-value,2014")
            async with app.change_of_value(addr, prof, 21, True, 60) as scm:
                p, v = await asyncio.wait_for(scm.get_value(), 2)
                t0 = time.monotonic()
                await asyncio.to_thread(post_json, srv, "/api/points/route.2.output_profile",
                                        {"value": 5, "priority": 12})
                while True:
                    p, v = await asyncio.wait_for(scm.get_value(), 1.0)
                    if str(p) == "present-value" and v == 5.0:
                        break
                assert time.monotonic() - t0 < 1.0
            await asyncio.to_thread(post_json, srv, "/api/points/route.2.output_profile",
                                    {"value": None, "priority": 12})
            # Both routes LIVE and their HTTP-TS outputs flowing.
            async def live(obj):
                return int(await app.read_property(addr, obj, "present-value")) == 1
            await wait_for("route 1 LIVE", lambda: live(names["one Route Status"]))
            await wait_for("route 2 LIVE", lambda: live(names["two Route Status"]))
            # Route one's Input Bitrate Trend Log (TL1003) read with
            # ReadRange holds the samples of its history, same timestamps.
            tl = ObjectIdentifier("trend-log,1003")
            assert await app.read_property(addr, tl, "object-name") == "one Input Bitrate Trend Log"
            async def logged():
                recs = await _route_log(app, addr, 1003)
                return recs if sum(1 for r in recs if r.logDatum.realValue is not None) >= 2 else None
            recs = await wait_for("TL1003 records", logged)
            his = rest(srv, "/api/points/route.1.input_bitrate/history")["samples"]
            reals = {_ts(r): r.logDatum.realValue for r in recs if r.logDatum.realValue is not None}
            newest = max(_ts(r) for r in recs)
            matched = 0
            for s in his:
                if _sample_ts(s["t"]) <= newest:
                    v = reals.get(_sample_ts(s["t"]))
                    assert v is not None and abs(v - s["v"]) <= 1e-6 * max(1.0, abs(s["v"])), (s, sorted(reals.items()))
                    matched += 1
            assert matched >= 2, (his, recs)
            assert ts1.grows() and ts2.grows()
            # Route Enable of route 2 off at priority 8 (manual operator).
            await app.write_property(addr, en2, "present-value", Enumerated(0), None, 8)
            pa = await app.read_property(addr, en2, "priority-array")
            assert pa[7].enumerated == 0 and pa[6].null is not None, (pa[6], pa[7])
            ccp = await app.read_property(addr, en2, "current-command-priority")
            assert int(ccp.unsigned) == 8
            async def stopped():
                return int(await app.read_property(addr, names["two Route Status"], "present-value")) == 3
            await wait_for("route 2 STOPPED", stopped)
            # On the wire: route 2's output stops, route 1's goes on.
            assert not ts2.grows(within=3.0), "route 2 still streams"
            assert ts1.grows(within=3.0), "route 1 stopped too"
            assert int(await app.read_property(addr, names["one Route Status"], "present-value")) == 1
            # The write is the point's one priority array, audited as bacnet.
            p = rest(srv, "/api/routes/two/points/route_enable")
            assert p["value"] is False
            rows = rest(srv, "/api/audit?point=route.2.route_enable&source=bacnet")["events"]
            assert any("route.2.route_enable" in json.dumps(r) and "bacnet" in json.dumps(r)
                       for r in rows), rows
            # Relinquish: route 2 streams again.
            await app.write_property(addr, en2, "present-value", Null(()), None, 8)
            await wait_for("route 2 LIVE again", lambda: live(names["two Route Status"]))
            assert ts2.grows()

            # A route created over REST: found within 2 s, new revision.
            rev0 = int(await app.read_property(addr, dev, "database-revision"))
            assert post_json(srv, "/api/routes", {
                "name": "four",
                "inputs": [{"name": "main", "type": "generator", "bitrate": 1000000}],
                "outputs": [{"name": "web", "type": "http", "path": "four"}]}) == 201
            t0 = time.time()
            async def appeared():
                ol = await app.read_property(addr, dev, "object-list")
                return ObjectIdentifier("structured-view,3") in ol and ol
            ol = await wait_for("route four's view", appeared, timeout=2.0)
            took = time.time() - t0
            assert ObjectIdentifier("binary-output,3010") in ol
            assert ObjectIdentifier("trend-log,3003") in ol
            assert await app.read_property(addr, ObjectIdentifier("trend-log,3003"), "object-name") == \
                "four Input Bitrate Trend Log"
            assert await app.read_property(addr, ObjectIdentifier("structured-view,3"), "object-name") == "four"
            assert await app.read_property(addr, ObjectIdentifier("binary-output,3010"), "object-name") == "four Route Enable"
            rev1 = int(await app.read_property(addr, dev, "database-revision"))
            assert rev1 > rev0
            subs = [s.objectIdentifier for s in await app.read_property(addr, top, "subordinate-list")]
            assert ObjectIdentifier("structured-view,3") in subs
            # Renamed over REST: the same slot and instances, the new names,
            # a new revision.
            assert post_json(srv, "/api/routes/four", {
                "name": "five",
                "inputs": [{"name": "main", "type": "generator", "bitrate": 1000000}],
                "outputs": [{"name": "web", "type": "http", "path": "four"}]}, method="PUT") == 200
            async def renamed():
                n = await app.read_property(addr, ObjectIdentifier("structured-view,3"), "object-name")
                return n == "five" and n
            await wait_for("route four renamed five", renamed, timeout=2.0)
            assert await app.read_property(addr, ObjectIdentifier("binary-output,3010"), "object-name") == "five Route Enable"
            rev2 = int(await app.read_property(addr, dev, "database-revision"))
            assert rev2 > rev1
            rev1 = rev2
            # Deleted: its objects are gone (UNKNOWN_OBJECT), revision again.
            req = urllib.request.Request(srv.http_base + "/api/routes/five", method="DELETE")
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status in (200, 204)
            async def gone():
                ol = await app.read_property(addr, dev, "object-list")
                return ObjectIdentifier("structured-view,3") not in ol and ol
            ol = await wait_for("route four's objects gone", gone, timeout=2.0)
            assert not any(o[1] >= 3000 and o[1] < 4000 for o in ol)
            for o in ("structured-view,3", "binary-output,3010", "analog-input,3003", "trend-log,3003"):
                with pytest.raises(ErrorRejectAbortNack) as e:
                    await app.read_property(addr, ObjectIdentifier(o), "object-name")
                assert "unknown-object" in str(e.value), o
            assert int(await app.read_property(addr, dev, "database-revision")) > rev1
            print(f"route found by bacpypes3 {took:.2f} s after POST")
        finally:
            app.close()

    try:
        run(go())
        if cap:
            time.sleep(1.0)
            cap.terminate()
            cap.wait(timeout=10)
            out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},bvlc", "-T", "fields",
                                  "-e", "frame.number", "-e", "udp.srcport", "-e", "_ws.malformed"],
                                 capture_output=True, text=True, check=True).stdout
            rows = [l.split("\t") for l in out.splitlines() if l.strip()]
            replies = [r for r in rows if r[1] == str(port)]
            malformed = [r for r in rows if len(r) > 2 and r[2]]
            print(f"tshark: {len(rows)} frames, {len(replies)} from castpoint, {len(malformed)} malformed")
            assert len(replies) > 100 and malformed == [], malformed
    finally:
        if cap and cap.poll() is None:
            cap.terminate()
        ts1.stop = ts2.stop = True
        srv.stop()


# ----------------------------------------------------- Haystack (phable)

def test_phable_navigates_routes_records_and_finds_a_rest_route():
    """phable walks nav site -> server equip -> route equip -> points,
    pointWrites route three's Recording Enable at level 8 (the recording
    file appears and grows), and finds a route made over REST within 2 s."""
    import os
    import pathlib
    from phable import Grid, Ref, open_haystack_client
    from test_haystack import user_entry

    text = (base_config_text() + "\n" + user_entry("op", "operator", "op-pass")
            + "\n[telemetry]\nenabled = true\n" + route("one")
            + route("three", 3) + '[[route.output]]\nname = "rec"\ntype = "record"\nenabled = false\n')
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    srv = Server(config=f.name)
    try:
        with open_haystack_client(srv.http_base + "/api/haystack", "op", "op-pass") as c:
            def nav(nav_id=None):
                if nav_id is None:
                    return c.call("nav").rows
                return c.call("nav", Grid.to_grid({"navId": Ref(nav_id)})).rows
            site = nav()
            assert len(site) == 1
            server = nav(site[0]["navId"].val)
            equip = [r for r in server if "equip" in r]
            assert equip, server
            children = nav(equip[0]["navId"].val)
            routes = {r["dis"]: r for r in children if "routeSlot" in r}
            assert set(routes) == {"one", "three"}, children
            points = nav(routes["three"]["navId"].val)
            rec = [p for p in points if p["id"].val == "route.3.recording_enable"]
            assert rec and "cmd" in rec[0] and "writable" in rec[0], points
            # Recording Enable of route three at level 8: its record output
            # starts writing under <data>/recordings/three/.
            c.point_write(Ref("route.3.recording_enable"), 8, True)
            arr = c.point_write_array(Ref("route.3.recording_enable")).rows
            assert any(r["level"].val == 8 and r.get("val") is True for r in arr), arr
            d = pathlib.Path(srv.data) / "recordings" / "three"

            def size():
                return sum(p.stat().st_size for p in d.glob("*.ts")) if d.is_dir() else 0
            until("route three records", lambda: size() > 0)
            s0 = size()
            until("the recording grows", lambda: size() > s0 + 188 * 100)
            # Route one records nothing (it has no record output).
            assert not (pathlib.Path(srv.data) / "recordings" / "one").exists()
            # A route made over REST: its equip is found within 2 s.
            assert post_json(srv, "/api/routes", {
                "name": "five",
                "inputs": [{"name": "main", "type": "generator", "bitrate": 1000000}],
                "outputs": [{"name": "web", "type": "http", "path": "five"}]}) == 201
            t0 = time.time()

            def found():
                rows = c.read_all('equip and routeSlot and dis=="five"').rows
                return rows and rows[0]
            until("route five's equip", found, timeout=2.0)
            took = time.time() - t0
            eq = found()
            pts = c.read_all(f'point and equipRef==@{eq["id"].val}').rows
            assert len(pts) == 31
            print(f"route found by phable {took:.2f} s after POST")
    finally:
        srv.stop()


# ------------------------------------------- pymodbus: input switch on the wire

def cc_errors(data):
    """MPEG-TS continuity errors per ISO 13818-1 2.4.3.3: a payload packet's
    continuity_counter is the previous one + 1 (mod 16), one duplicate
    allowed, a discontinuity_indicator resets the check."""
    last, dup, errors = {}, {}, 0
    start = data.find(b"\x47")
    for i in range(start, len(data) - 187, 188):
        p = data[i:i + 188]
        if p[0] != 0x47:
            errors += 1
            continue
        pid = ((p[1] & 0x1F) << 8) | p[2]
        if pid == 0x1FFF:
            continue
        afc, cc = (p[3] >> 4) & 3, p[3] & 0x0F
        disc = afc & 2 and p[4] > 0 and p[5] & 0x80
        if not afc & 1:
            continue
        if pid in last and not disc:
            if cc == last[pid]:
                if dup.get(pid):
                    errors += 1
                dup[pid] = True
                continue
            if cc != (last[pid] + 1) % 16:
                errors += 1
        last[pid], dup[pid] = cc, False
    return errors


def test_pymodbus_input_select_switches_route_3_http_ts_output_without_cc_errors():
    """Input Select written in route 3's Modbus block: route 3's HTTP-TS
    output switches to the backup input (4 Mb/s instead of 1 Mb/s on the
    wire) and the stream read across the switch has 0 CC errors."""
    text = (base_config_text() + "\n[telemetry]\nenabled = true\n" + route("one")
            + '[[route]]\nname = "three"\nslot = 3\n'
            '[[route.input]]\nname = "main"\ntype = "generator"\nbitrate = 1000000\n'
            '[[route.input]]\nname = "backup"\ntype = "generator"\nbitrate = 4000000\n'
            '[[route.output]]\nname = "web"\ntype = "http"\npath = "three"\n')
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    a = addresses(f.name)
    srv = Server(config=f.name)
    got = bytearray()
    stop = threading.Event()

    def reader():
        with urllib.request.urlopen(srv.http_base + "/stream/three.ts", timeout=5) as r:
            while not stop.is_set():
                b = r.read(188 * 7)
                if not b:
                    return
                got.extend(b)
    t = threading.Thread(target=reader, daemon=True)
    try:
        host, port = srv.addrs["modbus"]
        c = ModbusTcpClient(host, port=port, timeout=3)
        assert c.connect()
        status = a["route.3.route_status"][1]
        until("route 3 LIVE", lambda: c.read_holding_registers(status, count=1).registers == [1])
        t.start()
        until("route 3's output flows", lambda: len(got) > 188 * 200)

        def rate(seconds=3.0):
            n0, t0 = len(got), time.time()
            time.sleep(seconds)
            return (len(got) - n0) * 8 / (time.time() - t0)
        before = rate()
        assert not c.write_register(a["route.3.input_select"][1], 3).isError()
        until("route 3 forwards backup",
              lambda: c.read_holding_registers(a["route.3.active_input"][1], count=1).registers == [2])
        time.sleep(1.0)
        after = rate()
        assert after > 2 * before, (before, after)
        stop.set()
        t.join(timeout=10)
        assert cc_errors(bytes(got)) == 0
        # Route one still forwards its main input.
        assert rest(srv, "/api/routes/one/points/active_input")["state"] == "main"
        c.close()
        print(f"HTTP-TS of route 3: {before / 1e6:.2f} Mb/s before, {after / 1e6:.2f} Mb/s after, "
              f"{len(got)} bytes, 0 CC errors")
    finally:
        stop.set()
        srv.stop()
