"""BACnet/IP interop: bacpypes3 as the client of the real castpoint binary (who-is, RP/RPM of every object, WP with priorities, COV, DCC/Reinit), and tshark dissecting every reply."""
import asyncio
import datetime
import json
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from bacpypes3.apdu import (
    DeviceCommunicationControlRequest,
    ErrorRejectAbortNack,
    ReinitializeDeviceRequest,
    TimeSynchronizationRequest,
    WritePropertyMultipleRequest,
    WritePropertyRequest,
)
from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.basetypes import DateTime, ErrorType, PropertyValue, WriteAccessSpecification
from bacpypes3.constructeddata import Any, ListOf
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import (
    Boolean,
    CharacterString,
    Date,
    Enumerated,
    Null,
    ObjectIdentifier,
    Real,
    Time,
    Unsigned,
)

from conftest import base_config_text, ROOT, Server

PASSWORD = "interop-pw"
DEVICE = 389001


@pytest.fixture(scope="module")
def bserver():
    """castpoint with a BACnet password configured (DCC / ReinitializeDevice)."""
    text = base_config_text()
    text = text.replace("[bacnet]\n", f'[bacnet]\npassword = "{PASSWORD}"\n', 1)
    d = pathlib.Path(tempfile.mkdtemp(prefix="castpoint-bacnet-"))
    cfg = d / "castpoint.toml"
    cfg.write_text(text)
    s = Server(config=cfg)
    # Everything this module's tests send to and get from this server is
    # captured, for test_tshark_finds_nothing_malformed_over_the_whole_run.
    s.capture = None
    if shutil.which("tshark"):
        s.pcap = d / "module.pcap"
        s.capture = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", f"udp port {s.addrs['bacnet'][1]}", "-w", str(s.pcap)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in s.capture.stderr:
            if "Capture started" in line:
                break
        time.sleep(0.5)
    yield s
    if s.capture and s.capture.poll() is None:
        s.capture.terminate()
        s.capture.wait(timeout=10)
    s.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def client(instance=999):
    args = SimpleArgumentParser().parse_args(
        ["--address", "127.0.0.1/8:0", "--instance", str(instance)])
    return Application.from_args(args)


def target(s):
    host, port = s.addrs["bacnet"]
    return Address(f"127.0.0.1:{port}")


def rest_get(s, point):
    with urllib.request.urlopen(f"{s.http_base}/api/points/{point}") as r:
        return json.load(r)


def rest_write(s, point, value, priority):
    req = urllib.request.Request(
        f"{s.http_base}/api/points/{point}", method="POST",
        data=json.dumps({"value": value, "priority": priority}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def raw_rp_answers(s, wait=1.0):
    """Whether a raw ReadProperty (device object-name) gets any reply within `wait` s."""
    import socket
    import struct
    port = s.addrs["bacnet"][1]
    apdu = bytes([0x01, 0x04, 0x00, 0x05, 0x42, 0x0C, 0x0C]) + struct.pack(">I", (8 << 22) | DEVICE) + b"\x19\x4d"
    frame = bytes([0x81, 0x0A]) + struct.pack(">H", len(apdu) + 4) + apdu
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(wait)
    try:
        sock.sendto(frame, ("127.0.0.1", port))
        sock.recv(2048)
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


async def object_list(app, addr):
    return await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"), "object-list")


async def raw_write(app, addr, oid, prop, value, priority=None):
    """WriteProperty with the value sent as given (bacpypes3's write_property
    casts values to the property's datatype, which hides datatype errors)."""
    req = WritePropertyRequest(objectIdentifier=ObjectIdentifier(oid), propertyIdentifier=prop,
                               propertyValue=Any(value))
    if priority is not None:
        req.priority = priority
    req.pduDestination = addr
    return await app.request(req)


def test_who_is_answers_with_the_configured_device(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            iams = await app.who_is(DEVICE, DEVICE, addr)
            assert [i.iAmDeviceIdentifier for i in iams] == [ObjectIdentifier(f"device,{DEVICE}")]
            assert iams[0].maxAPDULengthAccepted == 1476
            assert iams[0].vendorID == 999
            # A range that excludes the device gets no I-Am.
            none = await app.who_is(1, 10, addr, timeout=1)
            assert none == []
        finally:
            app.close()
    run(go())


def test_who_has_by_name(bserver):
    async def go():
        app = client()
        try:
            ihaves = await app.who_has(object_name=CharacterString("Stream Enable"),
                                       address=target(bserver), timeout=2)
            assert [str(i.objectIdentifier) for i in ihaves] == ["binary-output,0"]
        finally:
            app.close()
    run(go())


def test_read_property_of_every_object(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            ol = await object_list(app, addr)
            # Seed addresses are exact, plus a Network Port.
            for want in ["analog-input,0", "analog-input,1", "analog-input,2",
                         "multi-state-value,0", "multi-state-value,1", "binary-output,0",
                         "network-port,1", "notification-class,1"]:
                assert ObjectIdentifier(want) in ol
            # Device, Network Port, 23 point objects, 10 Trend Logs (TLn logs
            # AIn), the 3 shipped Notification Classes, the server's
            # Structured View (no routes here: issue 20).
            assert len(ol) == 39
            assert ol[-1] == ObjectIdentifier("structured-view,0")
            assert sum(1 for o in ol if str(o[0]) == "trend-log") == 10
            # object-list by index: 0 is the size, 1 the device.
            n = await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"), "object-list", 0)
            assert n == len(ol)
            first = await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"), "object-list", 1)
            assert first == ObjectIdentifier(f"device,{DEVICE}")
            for oid in ol:
                name = await app.read_property(addr, oid, "object-name")
                assert name
                if str(oid[0]) in ("analog-input", "analog-value", "binary-output", "multi-state-value"):
                    pv = await app.read_property(addr, oid, "present-value")
                    assert pv is not None
                    sf = await app.read_property(addr, oid, "status-flags")
                    assert sf is not None
            units = await app.read_property(addr, ObjectIdentifier("analog-input,3"), "units")
            assert str(units) == "percent"
            # The 2024 bit-rate unit (gigabits-per-second) by number.
            units = await app.read_property(addr, ObjectIdentifier("analog-input,2"), "units")
            assert int(units) == 47932
            st = await app.read_property(addr, ObjectIdentifier("multi-state-value,0"), "state-text")
            assert list(st) == ["OK", "WARNING", "FAULT"]
            # No transcoder, no RTMP output: Encoder Status (MSV3) and CDN
            # Status (MSV4) read their N/A state, not OK / CONNECTED, with
            # the fault flag and reliability no-sensor.
            for inst, n in ((3, 4), (4, 3)):
                o = ObjectIdentifier(f"multi-state-value,{inst}")
                assert int(await app.read_property(addr, o, "present-value")) == n
                assert list(await app.read_property(addr, o, "state-text"))[n - 1] == "N/A"
                assert str(await app.read_property(addr, o, "reliability")) == "no-sensor"
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.read_property(addr, ObjectIdentifier("multi-state-value,0"), "state-text", 99)
            assert "invalid-array-index" in str(e.value)
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.read_property(addr, ObjectIdentifier("analog-input,77"), "present-value")
            assert "unknown-object" in str(e.value)
        finally:
            app.close()
    run(go())


def test_rpm_all_required_optional_of_every_object(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            ol = await object_list(app, addr)
            for oid in ol:
                res = await app.read_property_multiple(addr, [oid, ["all"]])
                props = {str(p) for (_, p, _, v) in res}
                assert "object-name" in props and "object-type" in props, oid
                errors = [(p, v) for (_, p, _, v) in res if isinstance(v, (ErrorType, ErrorRejectAbortNack))]
                if str(oid[0]) == "trend-log":
                    # Log_Buffer is ReadRange-only (Clause 12.25.14): an
                    # inline read-access-denied, never a broken reply.
                    assert [(str(p), str(v.errorCode)) for p, v in errors] == \
                        [("log-buffer", "read-access-denied")], (oid, errors)
                    continue
                assert errors == [], (oid, errors)
                req = await app.read_property_multiple(addr, [oid, ["required"]])
                opt = await app.read_property_multiple(addr, [oid, ["optional"]])
                assert {str(p) for (_, p, _, _) in req} | {str(p) for (_, p, _, _) in opt} >= props - {"property-list"}
            # Per-property errors inline.
            res = await app.read_property_multiple(
                addr, [ObjectIdentifier("analog-input,0"), ["present-value", "state-text"]])
            assert isinstance(res[1][3], ErrorType)
            assert str(res[1][3].errorCode) == "unknown-property"
        finally:
            app.close()
    run(go())


COMMANDABLE = [
    ("analog-value,0", "input_select", [Real(2.0), Real(1.0), Real(16.0)], [2.0, 1.0, 16.0], 0.0),
    ("analog-value,1", "output_profile", [Real(2.0), Real(1.0), Real(64.0)], [2.0, 1.0, 64.0], 0.0),
    ("binary-output,0", "stream_enable", [Enumerated(0), Enumerated(1), Enumerated(0)], [False, True, False], True),
    ("binary-output,1", "recording_enable", [Enumerated(1), Enumerated(0), Enumerated(1)], [True, False, True], False),
    ("binary-output,2", "transcode_enable", [Enumerated(1), Enumerated(0), Enumerated(1)], [True, False, True], False),
    # system_restart (BO3) is a trigger the router consumes: see
    # test_system_restart_is_a_consumed_trigger.
]


def pv_number(v):
    return float(v) if not hasattr(v, "attr") else (1.0 if str(v) == "active" else 0.0)


@pytest.mark.parametrize("oid,point,values,expect,default", COMMANDABLE)
def test_write_priorities_and_relinquish(bserver, oid, point, values, expect, default):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            o = ObjectIdentifier(oid)
            # Lowest priority first, then more important ones win.
            for prio, v, want in zip([16, 9, 1], values, expect):
                await app.write_property(addr, o, "present-value", v, None, prio)
                pv = await app.read_property(addr, o, "present-value")
                assert pv_number(pv) == float(want), (prio, pv)
                slot = await app.read_property(addr, o, "priority-array", prio)
                assert slot is not None
                assert rest_get(bserver, point)["value"] == want
                ccp = await app.read_property(addr, o, "current-command-priority")
                assert int(ccp.unsigned) == prio
            # Relinquish 1: priority 9 is back in force, then 9, then 16.
            await app.write_property(addr, o, "present-value", Null(()), None, 1)
            pv = await app.read_property(addr, o, "present-value")
            assert pv_number(pv) == float(expect[1])
            await app.write_property(addr, o, "present-value", Null(()), None, 9)
            await app.write_property(addr, o, "present-value", Null(()), None, 16)
            pv = await app.read_property(addr, o, "present-value")
            assert pv_number(pv) == float(default)
            body = rest_get(bserver, point)
            assert body["value"] == default
            # Priority 6 (minimum on/off) is refused.
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.write_property(addr, o, "present-value", values[0], None, 6)
            assert "write-access-denied" in str(e.value)
        finally:
            app.close()
    run(go())


def test_write_errors_use_standard_codes(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            cases = [
                ("analog-value,0", "present-value", Real(17.0), 10, "value-out-of-range"),
                ("analog-value,0", "present-value", CharacterString("x"), 10, "invalid-data-type"),
                ("binary-output,0", "present-value", Real(1.0), 10, "invalid-data-type"),
                ("analog-input,0", "present-value", Real(1.0), None, "write-access-denied"),
                ("analog-value,0", "object-name", CharacterString("x"), None, "write-access-denied"),
                ("multi-state-value,0", "present-value", Unsigned(2), None, "write-access-denied"),
                # Input Select takes whole input numbers only.
                ("analog-value,0", "present-value", Real(2.5), 10, "value-out-of-range"),
                # A missing object (Clause 15.9): unknown-object.
                ("analog-value,99", "present-value", Real(1.0), 10, "unknown-object"),
                # The device, its port and the logs are configuration: their
                # properties are read-only (Clause 15.9: write-access-denied).
                (f"device,{DEVICE}", "object-name", CharacterString("x"), None, "write-access-denied"),
                (f"device,{DEVICE}", "description", CharacterString("x"), None, "write-access-denied"),
                ("network-port,1", "object-name", CharacterString("x"), None, "write-access-denied"),
                ("trend-log,3", "enable", Boolean(False), None, "write-access-denied"),
                ("trend-log,3", "record-count", Unsigned(0), None, "write-access-denied"),
            ]
            for oid, prop, v, prio, code in cases:
                with pytest.raises(ErrorRejectAbortNack) as e:
                    await raw_write(app, addr, oid, prop, v, prio)
                assert code in str(e.value), (oid, prop, str(e.value))
            # Nothing was changed by the refused writes.
            assert rest_get(bserver, "input_select")["value"] == 0
        finally:
            app.close()
    run(go())


def test_write_property_multiple(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            req = WritePropertyMultipleRequest(listOfWriteAccessSpecs=[
                WriteAccessSpecification(
                    objectIdentifier=ObjectIdentifier("analog-value,0"),
                    listOfProperties=[PropertyValue(propertyIdentifier="present-value",
                                                    value=Any(Real(3.0)), priority=11)]),
                WriteAccessSpecification(
                    objectIdentifier=ObjectIdentifier("binary-output,1"),
                    listOfProperties=[PropertyValue(propertyIdentifier="present-value",
                                                    value=Any(Enumerated(1)), priority=11)]),
            ])
            req.pduDestination = addr
            await app.request(req)
            assert rest_get(bserver, "input_select")["value"] == 3.0
            assert rest_get(bserver, "recording_enable")["value"] is True
            for oid in ("analog-value,0", "binary-output,1"):
                await app.write_property(addr, ObjectIdentifier(oid), "present-value", Null(()), None, 11)
        finally:
            app.close()
    run(go())


def test_rest_write_shows_in_bacnet_priority_array(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            rest_write(bserver, "output_profile", 3, 12)
            slot = await app.read_property(addr, ObjectIdentifier("analog-value,1"), "priority-array", 12)
            assert float(slot.real) == 3.0
            pv = await app.read_property(addr, ObjectIdentifier("analog-value,1"), "present-value")
            assert pv == 3.0
            rest_write(bserver, "output_profile", None, 12)
            pv = await app.read_property(addr, ObjectIdentifier("analog-value,1"), "present-value")
            assert pv == 0.0
        finally:
            app.close()
    run(go())


def test_cov_notification_within_one_second(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            oid = ObjectIdentifier("analog-value,1")
            async with app.change_of_value(addr, oid, 17, True, 120) as scm:
                # Initial notification on subscribe.
                seen = {}
                t_end = time.time() + 2
                while len(seen) < 2 and time.time() < t_end:
                    p, v = await asyncio.wait_for(scm.get_value(), 2)
                    seen[str(p)] = v
                assert "present-value" in seen
                t0 = time.monotonic()
                await asyncio.to_thread(rest_write, bserver, "output_profile", 5, 12)
                while True:
                    p, v = await asyncio.wait_for(scm.get_value(), 1.0)
                    if str(p) == "present-value" and v == 5.0:
                        break
                assert time.monotonic() - t0 < 1.0
            rest_write(bserver, "output_profile", None, 12)
        finally:
            app.close()
    run(go())


def test_unconfirmed_cov_and_cancellation(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            oid = ObjectIdentifier("binary-output,2")
            async with app.change_of_value(addr, oid, 18, False, 60) as scm:
                p, v = await asyncio.wait_for(scm.get_value(), 2)
                await asyncio.to_thread(rest_write, bserver, "transcode_enable", True, 13)
                got = None
                while got != "active":
                    p, v = await asyncio.wait_for(scm.get_value(), 1.0)
                    if str(p) == "present-value":
                        got = str(v)
            # Leaving the context cancelled it: no subscription remains.
            subs = await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"),
                                           "active-cov-subscriptions")
            assert all(s.monitoredPropertyReference.objectIdentifier != oid for s in subs)
            rest_write(bserver, "transcode_enable", None, 13)
        finally:
            app.close()
    run(go())


def restart_consumed(server, protocol, timeout=5.0):
    """True once the audit shows System Restart written by `protocol` and
    then relinquished by castpoint itself, and the point is back to false."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(
                server.http_base + "/api/audit?target=system_restart&limit=20", timeout=5) as r:
            ev = json.load(r)["events"]
        wrote = [e for e in ev if e["protocol"] == protocol and e["requested"] == "true"]
        released = [e for e in ev if e["protocol"] == "internal" and e["requested"] == "null"]
        if wrote and released and released[0]["id"] > wrote[0]["id"] \
                and rest_get(server, "system_restart")["value"] is False:
            return True
        time.sleep(0.1)
    return False


def test_system_restart_is_a_consumed_trigger(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            await app.write_property(addr, ObjectIdentifier("binary-output,3"), "present-value",
                                     Enumerated(1), None, 12)
        finally:
            app.close()
    run(go())
    assert restart_consumed(bserver, "bacnet")


def test_undefined_enumerations_are_rejected_and_create_object_is_refused(bserver):
    """Issue 18 item 7 and Clause 15.3: bacpypes3 sends DCC enable-disable 7,
    ReinitializeDevice state 9 (Reject UNDEFINED_ENUMERATION) and a
    CreateObject (Error OBJECT / DYNAMIC_CREATION_NOT_SUPPORTED)."""
    from bacpypes3.apdu import CreateObjectRequest, CreateObjectRequestObjectSpecifier

    def norm(e):
        return str(e).lower().replace("-", "").replace("_", "")

    async def go():
        app = client()
        try:
            addr = target(bserver)
            for req in (DeviceCommunicationControlRequest(enableDisable=7, password=PASSWORD),
                        ReinitializeDeviceRequest(reinitializedStateOfDevice=9, password=PASSWORD)):
                req.pduDestination = addr
                with pytest.raises(ErrorRejectAbortNack) as e:
                    await app.request(req)
                assert "undefinedenumeration" in norm(e.value), str(e.value)
            co = CreateObjectRequest(
                objectSpecifier=CreateObjectRequestObjectSpecifier(objectType="analog-value"))
            co.pduDestination = addr
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.request(co)
            # bacpypes3 decodes it as a CreateObject-Error (whose str() it
            # cannot build, so read the fields).
            err = e.value
            assert type(err).__name__ == "CreateObjectError", type(err)
            got = (norm(err.errorType.errorClass), norm(err.errorType.errorCode),
                   int(err.firstFailedElementNumber))
            assert got == ("object", "dynamiccreationnotsupported", 0), got
            # The device keeps answering.
            name = await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"), "object-name")
            assert str(name)
        finally:
            app.close()
    run(go())


def test_dcc_and_reinitialize_need_the_password(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            bad = ReinitializeDeviceRequest(reinitializedStateOfDevice="warmstart", password="nope")
            bad.pduDestination = addr
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.request(bad)
            assert "password-failure" in str(e.value)
            assert rest_get(bserver, "system_restart")["value"] is False
            ok = ReinitializeDeviceRequest(reinitializedStateOfDevice="warmstart", password=PASSWORD)
            ok.pduDestination = addr
            await app.request(ok)
            # Warmstart commanded System Restart at priority 8; the router
            # carried it out and relinquished the trigger.
            assert await asyncio.to_thread(restart_consumed, bserver, "bacnet")

            dcc = DeviceCommunicationControlRequest(timeDuration=1, enableDisable="disableInitiation",
                                                    password=PASSWORD)
            dcc.pduDestination = addr
            await app.request(dcc)
            # disable-initiation stops I-Am/COV initiation but the device still answers.
            assert await asyncio.to_thread(raw_rp_answers, bserver) is True
            # "disable" was deprecated by protocol revision 20: refused.
            off = DeviceCommunicationControlRequest(timeDuration=5, enableDisable="disable",
                                                    password=PASSWORD)
            off.pduDestination = addr
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.request(off)
            assert "service-request-denied" in str(e.value)
            en = DeviceCommunicationControlRequest(enableDisable="enable", password=PASSWORD)
            en.pduDestination = addr
            await app.request(en)
            assert await asyncio.to_thread(raw_rp_answers, bserver) is True
            bad = DeviceCommunicationControlRequest(enableDisable="disableInitiation", password="nope")
            bad.pduDestination = addr
            with pytest.raises(ErrorRejectAbortNack) as e:
                await app.request(bad)
            assert "password-failure" in str(e.value)
            # Time synchronization is accepted (unconfirmed) and the device keeps answering.
            ts = TimeSynchronizationRequest(time=DateTime(date=Date("2025-01-02"), time=Time("03:04:05")))
            ts.pduDestination = addr
            await app.request(ts)
            name = await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"), "object-name")
            assert name == "castpoint"
        finally:
            app.close()
    run(go())


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_finds_no_malformed_reply(bserver, tmp_path):
    host, port = bserver.addrs["bacnet"]
    pcap = tmp_path / "bacnet.pcap"
    cap = subprocess.Popen(["tshark", "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # tshark takes seconds to load its dissectors: traffic sent before
        # "Capture started" would be missed.
        for line in cap.stderr:
            if "Capture started" in line:
                break
        time.sleep(0.5)

        async def go():
            app = client()
            try:
                addr = target(bserver)
                await app.who_is(DEVICE, DEVICE, addr)
                ol = await object_list(app, addr)
                for oid in ol:
                    await app.read_property_multiple(addr, [oid, ["all"]])
                    await app.read_property(addr, oid, "object-name")
                await app.write_property(addr, ObjectIdentifier("analog-value,0"), "present-value", Real(4.0), None, 10)
                await app.write_property(addr, ObjectIdentifier("analog-value,0"), "present-value", Null(()), None, 10)
                try:
                    await app.write_property(addr, ObjectIdentifier("analog-value,0"), "present-value", Real(99), None, 10)
                except ErrorRejectAbortNack:
                    pass
                async with app.change_of_value(addr, ObjectIdentifier("analog-value,1"), 3, True, 30) as scm:
                    await asyncio.wait_for(scm.get_value(), 2)
            finally:
                app.close()
        run(go())
        time.sleep(1.0)
    finally:
        cap.terminate()
        cap.wait(timeout=10)
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},bvlc", "-T", "fields",
                          "-e", "frame.number", "-e", "udp.srcport", "-e", "bacapp.type", "-e", "_ws.malformed",
                          "-e", "_ws.expert.severity"],
                         capture_output=True, text=True, check=True).stdout
    rows = [l.split("\t") for l in out.splitlines() if l.strip()]
    replies = [r for r in rows if r[1] == str(port)]
    assert len(replies) > 50, out
    malformed = [r for r in rows if r[3]]
    assert malformed == [], malformed
    text = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},bvlc"],
                          capture_output=True, text=True, check=True).stdout
    assert "Malformed" not in text
    assert "complex-ACK" in text or "Complex-ACK" in text or "readPropertyMultiple" in text


def test_rpm_all_of_the_whole_device_in_one_request(bserver):
    """One RPM ALL for every object: larger than one APDU, so it comes back segmented."""
    async def go():
        app = client()
        try:
            addr = target(bserver)
            ol = await object_list(app, addr)
            params = []
            for oid in ol:
                params += [oid, ["all"]]
            res = await app.read_property_multiple(addr, params)
            assert {o for (o, _, _, _) in res} == set(ol)
            assert len(res) > 300
        finally:
            app.close()
    run(go())


def test_export_ede(tmp_path):
    from conftest import castpoint_bin
    out = subprocess.run([castpoint_bin(), "export", "ede"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "VERSION_OF_LAYOUT;2.3" in lines
    rows = [l.split(";") for l in lines if not l.startswith("#") and l.count(";") == 15]
    server = [r for r in rows if not r[0].startswith("route.")]
    # device + network port + 23 objects + 10 Trend Logs + 3 classes + the server's view
    assert len(server) == 39
    # The embedded config's demo route (slot 1): its view, 31 objects at
    # instances 1000.. and 7 Trend Logs (TL1003..TL1009 log AI1003..AI1009)
    # (issue 20).
    route = [r for r in rows if r[0].startswith("route.1")]
    assert len(route) == 32 + 7
    assert [(r[0], r[3], r[4]) for r in route if r[3] == "20"][0] == \
        ("route.1.input_bitrate_trend", "20", "1003")
    assert [int(r[4]) for r in route if r[3] == "20"] == list(range(1003, 1010))
    assert ["route.1", "29", "1"] == [route[0][0]] + route[0][3:5]
    assert {r[2] for r in route} >= {"demo", "demo Route Enable", "demo Input Select"}
    assert [r[3:5] for r in route if r[0] == "route.1.route_enable"] == [["4", "1010"]]
    # The EDE's object types are the Device's Protocol_Object_Types_Supported.
    assert {int(r[3]) for r in rows} == {0, 2, 4, 8, 15, 19, 20, 29, 56}
    assert [r[3:5] for r in rows if r[0] == "cpu_usage_trend"] == [["20", "3"]]
    by_key = {r[0]: r for r in rows}
    assert by_key["stream_enable"][3:5] == ["4", "0"]
    assert by_key["cpu_usage"][14] == "98"
    subprocess.run([castpoint_bin(), "export", "ede", "--out", str(tmp_path)], check=True,
                   capture_output=True)
    states = (tmp_path / "castpoint_StateTexts.csv").read_text()
    assert ";LIVE;STOPPED;ERROR" in states


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_i_am_broadcast_at_start_up(tmp_path):
    pcap = tmp_path / "iam.pcap"
    cap = subprocess.Popen(["tshark", "-i", "lo", "-f", "udp and dst host 127.255.255.255",
                            "-w", str(pcap)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in cap.stderr:
            if "Capture started" in line:
                break
        time.sleep(0.5)
        s = Server()
        port = s.addrs["bacnet"][1]
        time.sleep(1.0)
        s.stop()
    finally:
        cap.terminate()
        cap.wait(timeout=10)
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},bvlc", "-T", "fields",
                          "-e", "udp.srcport", "-e", "bvlc.function", "-e", "bacapp.unconfirmed_service",
                          "-e", "bacapp.instance_number"],
                         capture_output=True, text=True, check=True).stdout
    rows = [l.split("\t") for l in out.splitlines() if l.strip()]
    assert [str(port), "0x0b", "0", str(DEVICE)] in rows, out


# ------------------------------------------- issue 18: conformance checks

def raw_exchange(s, frames, wait=1.5, want=None):
    """Sends raw BVLC frames to the server from one socket and returns the
    datagrams received until `want` of them arrived or `wait` s of silence."""
    import socket
    port = s.addrs["bacnet"][1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(wait)
    got = []
    try:
        for f in frames:
            sock.sendto(f, ("127.0.0.1", port))
        while want is None or len(got) < want:
            try:
                got.append(sock.recv(2048))
            except socket.timeout:
                break
    finally:
        sock.close()
    return got


def bvlc_unicast(apdu, confirmed=True):
    import struct
    npdu = bytes([0x01, 0x04 if confirmed else 0x00]) + apdu
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


def test_event_information_lists_what_the_objects_say(bserver):
    """GetEventInformation lists exactly the objects whose alarm is not
    NORMAL or waits for an ack (Clause 13.12), each as its own properties
    read; GetAlarmSummary the ones in alarm; the Trend Logs claim no
    intrinsic reporting (docs/bacnet-pics.md, Alarms and events)."""
    from bacpypes3.apdu import GetEventInformationACK, GetEventInformationRequest

    async def go():
        app = client()
        try:
            addr = target(bserver)
            req = GetEventInformationRequest()
            req.pduDestination = addr
            ack = await app.request(req)
            assert isinstance(ack, GetEventInformationACK), ack
            assert not ack.moreEvents
            listed = {s.objectIdentifier: s for s in ack.listOfEventSummaries}
            for oid in await object_list(app, addr):
                props = {str(p) for p in await app.read_property(addr, oid, "property-list")}
                if "event-enable" not in props:
                    assert oid not in listed, oid
                    continue
                state = str(await app.read_property(addr, oid, "event-state"))
                acked = list(await app.read_property(addr, oid, "acked-transitions"))
                if state != "normal" or acked != [1, 1, 1]:
                    assert oid in listed, oid
                    assert str(listed[oid].eventState) == state
                    assert list(listed[oid].acknowledgedTransitions) == acked
                else:
                    assert oid not in listed, oid
            in_alarm = {(int(o[0]), o[1]) for o, s in listed.items() if str(s.eventState) != "normal"}
            # GetAlarmSummary raw: bacpypes3 0.0.110 drops an ACK whose list
            # is empty (valid: a SEQUENCE OF with no entries, sent when
            # nothing is in alarm) and times out, so the test decodes the
            # entries itself: object id, event state, acked transitions.
            got = raw_exchange(bserver, [bvlc_unicast(bytes([0x00, 0x05, 0x22, 0x03]))], want=1)
            assert got and got[0][6:9] == bytes([0x30, 0x22, 0x03]), got
            body, ids, i = got[0][9:], set(), 0
            while i < len(body):
                assert body[i] == 0xC4 and body[i + 5] == 0x91 and body[i + 7] == 0x82, body.hex()
                v = int.from_bytes(body[i + 1:i + 5], "big")
                ids.add((v >> 22, v & 0x3FFFFF))
                i += 10
            assert ids == in_alarm, (ids, in_alarm)
            # The Trend Logs advertise no intrinsic reporting.
            props = await app.read_property(addr, ObjectIdentifier("trend-log,3"), "property-list")
            names = {str(p) for p in props}
            assert not names & {"notification-class", "event-enable", "acked-transitions",
                                "notify-type", "event-time-stamps"}, names
        finally:
            app.close()
    run(go())
    # GetEnrollmentSummary (4), filter ALL: a ComplexACK listing the
    # alarm-capable objects (raw: bacpypes3 0.0.110 cannot decode it).
    got = raw_exchange(bserver, [bvlc_unicast(bytes([0x00, 0x05, 0x21, 0x04, 0x09, 0x00]))],
                       want=1)
    assert got and got[0][6:9] == bytes([0x30, 0x21, 0x04]) and len(got[0]) > 9, got


def test_protocol_object_types_supported_is_the_served_types(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            dev = ObjectIdentifier(f"device,{DEVICE}")
            types = await app.read_property(addr, dev, "protocol-object-types-supported")
            claimed = set(str(types).split(";"))
            served = {str(o[0]) for o in await object_list(app, addr)}
            # structured-view: the server's view (issue 20; route objects
            # add no type the server's points do not already have).
            assert claimed == served == {"analog-input", "analog-value", "binary-output", "device",
                                         "multi-state-value", "trend-log", "structured-view",
                                         "network-port", "notification-class"}, claimed
            uuid = await app.read_property(addr, dev, "device-uuid")
            assert len(uuid) == 16 and uuid != bytes(16)
            assert uuid[6] >> 4 == 4, "version 4"
        finally:
            app.close()
    run(go())


def test_a_network_command_does_not_set_overridden(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            o = ObjectIdentifier("analog-value,1")
            await app.write_property(addr, o, "present-value", Real(5.0), None, 8)
            assert rest_get(bserver, "output_profile")["status"] == "overridden"
            sf = await app.read_property(addr, o, "status-flags")
            assert list(sf) == [0, 0, 0, 0], sf
            ccp = await app.read_property(addr, o, "current-command-priority")
            assert int(ccp.unsigned) == 8
            await app.write_property(addr, o, "present-value", Null(()), None, 8)
        finally:
            app.close()
    run(go())


def test_each_who_is_gets_an_i_am(bserver):
    """A retry within 200 ms is answered too (Clause 16.10)."""
    who_is = bvlc_unicast(bytes([0x10, 0x08]), confirmed=False)
    got = raw_exchange(bserver, [who_is, who_is, who_is], want=3)
    iams = [g for g in got if g[6:8] == bytes([0x10, 0x00])]
    assert len(iams) == 3, got


def test_reinitialize_sets_last_restart_reason(bserver):
    async def go():
        app = client()
        try:
            addr = target(bserver)
            req = ReinitializeDeviceRequest(reinitializedStateOfDevice="coldstart", password=PASSWORD)
            req.pduDestination = addr
            await app.request(req)
            reason = await app.read_property(addr, ObjectIdentifier(f"device,{DEVICE}"),
                                             "last-restart-reason")
            assert str(reason) == "coldstart"
        finally:
            app.close()
    run(go())
    assert restart_consumed(bserver, "bacnet")


def test_write_policy_refuses_a_source_outside_write_allow():
    """[bacnet] write_allow without this host: write-access-denied, audited
    with the BACnet peer, value unchanged."""
    text = base_config_text()
    text = text.replace("[bacnet]\n", '[bacnet]\nwrite_allow = ["192.0.2.0/24"]\n', 1)
    d = pathlib.Path(tempfile.mkdtemp(prefix="castpoint-bacnet-policy-"))
    (d / "castpoint.toml").write_text(text)
    s = Server(config=d / "castpoint.toml")
    try:
        async def go():
            app = client(994)
            try:
                with pytest.raises(ErrorRejectAbortNack) as e:
                    await app.write_property(target(s), ObjectIdentifier("analog-value,0"),
                                             "present-value", Real(3.0), None, 10)
                assert "write-access-denied" in str(e.value)
            finally:
                app.close()
        run(go())
        assert rest_get(s, "input_select")["value"] == 0
        with urllib.request.urlopen(s.http_base + "/api/audit?target=input_select&limit=5") as r:
            ev = json.load(r)["events"]
        assert ev and ev[0]["protocol"] == "bacnet" and ev[0]["result"].startswith("refused"), ev
        assert ev[0]["peer"].startswith("127.0.0.1:"), ev
    finally:
        s.stop()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_finds_nothing_malformed_over_the_whole_run(bserver):
    """Runs after every other test of `bserver` (file order): tshark
    dissects all their traffic, new services included; 0 malformed."""
    time.sleep(1.0)
    bserver.capture.terminate()
    bserver.capture.wait(timeout=10)
    port = bserver.addrs["bacnet"][1]
    out = subprocess.run(["tshark", "-r", str(bserver.pcap), "-d", f"udp.port=={port},bvlc",
                          "-T", "fields", "-e", "frame.number", "-e", "_ws.malformed",
                          "-e", "_ws.expert.message"],
                         capture_output=True, text=True, check=True).stdout
    rows = [l.split("\t") for l in out.splitlines() if l.strip()]
    assert len(rows) > 20, len(rows)
    malformed = [r for r in rows if len(r) > 1 and r[1]]
    assert malformed == [], malformed
    text = subprocess.run(["tshark", "-r", str(bserver.pcap), "-d", f"udp.port=={port},bvlc"],
                          capture_output=True, text=True, check=True).stdout
    assert "Malformed" not in text
    print(f"tshark: {len(rows)} frames, 0 malformed")


# ------------------------------------------------------------- Trend Logs

def _ts(rec):
    """A LogRecord's timestamp as (y, m, d, H, M, S, hundredths)."""
    d, t = rec.timestamp.date, rec.timestamp.time
    return (d[0] + 1900, d[1], d[2], t[0], t[1], t[2], t[3])


def _sample_ts(iso):
    """A history sample's RFC 3339 time, truncated to BACnet hundredths (UTC device)."""
    at = datetime.datetime.fromisoformat(iso).astimezone(datetime.timezone.utc)
    return (at.year, at.month, at.day, at.hour, at.minute, at.second, at.microsecond // 10_000)


async def _read_range(app, addr, inst, rng):
    from bacpypes3.apdu import ReadRangeACK, ReadRangeRequest
    from bacpypes3.basetypes import LogRecord
    req = ReadRangeRequest(objectIdentifier=ObjectIdentifier(f"trend-log,{inst}"),
                           propertyIdentifier="log-buffer", range=rng)
    req.pduDestination = addr
    ack = await app.request(req)
    assert isinstance(ack, ReadRangeACK), ack
    recs = ack.itemData.cast_out(ListOf(LogRecord))
    return list(ack.resultFlags), ack.itemCount, ack.firstSequenceNumber, list(recs)


@pytest.fixture(scope="module")
def tserver():
    """castpoint restarted over a data dir whose SQLite history holds 40
    cpu_usage samples of the last hour (telemetry off: nothing else moves)."""
    import sqlite3
    d = tempfile.mkdtemp(prefix="castpoint-trend-")
    first = Server(data=d)  # creates the schema
    first.stop()
    now = int(time.time() * 1000)
    rows = [("cpu_usage", now - 3_600_000 + k * 60_000 + k * 137, 2.5 * k) for k in range(40)]
    # memory_usage (TL4): 1,000 samples, more than one ReadRange answer holds.
    rows += [("memory_usage", now - 10_000_000 + k * 10_000, float(k % 97)) for k in range(1000)]
    db = sqlite3.connect(pathlib.Path(d) / "castpoint.db")
    db.executemany("INSERT INTO history (point, at, value) VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()
    s = Server(data=d)
    yield s
    s.stop()


def test_trend_log_properties_and_read_range_match_the_point_history(tserver):
    from bacpypes3.basetypes import (Range, RangeByPosition, RangeBySequenceNumber,
                                     RangeByTime)
    with urllib.request.urlopen(f"{tserver.http_base}/api/points/cpu_usage/history") as r:
        his = json.load(r)["samples"]
    assert len(his) == 40, "the restored history"

    async def go():
        app = client(996)
        addr = target(tserver)
        oid = ObjectIdentifier("trend-log,3")
        try:
            assert oid in await object_list(app, addr)
            rp = lambda p: app.read_property(addr, oid, p)
            assert await rp("object-name") == "CPU Usage Trend Log"
            assert await rp("enable") == 1          # Log_Enable
            assert await rp("stop-when-full") == 0
            assert await rp("buffer-size") == 10000
            # 40 restored samples + LOG_INTERRUPTED for the restart.
            assert await rp("record-count") == 41
            assert await rp("total-record-count") == 41
            assert await rp("log-interval") == 3000   # 30 s sample period
            assert str(await rp("logging-type")) == "polled"
            ref = await rp("log-device-object-property")
            assert ref.objectIdentifier == ObjectIdentifier("analog-input,3")
            assert str(ref.propertyIdentifier) == "present-value"

            # By position: the first 5 are the oldest samples, same values
            # and timestamps (to the hundredth) as /api/points/{id}/history.
            flags, n, seq, recs = await _read_range(
                app, addr, 3, Range(byPosition=RangeByPosition(referenceIndex=1, count=5)))
            assert (flags, n, seq) == ([1, 0, 0], 5, None)
            for rec, s in zip(recs, his[:5]):
                assert rec.logDatum.realValue == s["v"]
                assert _ts(rec) == _sample_ts(s["t"])

            # The whole buffer in one answer: FIRST_ITEM and LAST_ITEM; the
            # newest record is the restart's LOG_INTERRUPTED status.
            flags, n, seq, recs = await _read_range(
                app, addr, 3, Range(byPosition=RangeByPosition(referenceIndex=1, count=1000)))
            assert (flags, n) == ([1, 1, 0], 41)
            assert [r.logDatum.realValue for r in recs[:40]] == [s["v"] for s in his]
            assert [_ts(r) for r in recs[:40]] == [_sample_ts(s["t"]) for s in his]
            assert recs[40].logDatum.logStatus is not None
            assert list(recs[40].logDatum.logStatus) == [0, 0, 1]   # log-interrupted

            # By time: after a reference between samples 10 and 11, five
            # records from the 11th (sequence number 11).
            a, b = (datetime.datetime.fromisoformat(his[i]["t"]) for i in (9, 10))
            mid = (a + (b - a) / 2).astimezone(datetime.timezone.utc)
            ref_time = DateTime(
                date=Date((mid.year - 1900, mid.month, mid.day, mid.isoweekday())),
                time=Time((mid.hour, mid.minute, mid.second, mid.microsecond // 10_000)))
            flags, n, seq, recs = await _read_range(
                app, addr, 3, Range(byTime=RangeByTime(referenceTime=ref_time, count=5)))
            assert (flags, n, seq) == ([0, 0, 0], 5, 11)
            assert [r.logDatum.realValue for r in recs] == [s["v"] for s in his[10:15]]
            assert [_ts(r) for r in recs] == [_sample_ts(s["t"]) for s in his[10:15]]
            # Backwards from the same reference: the three before it.
            flags, n, seq, recs = await _read_range(
                app, addr, 3, Range(byTime=RangeByTime(referenceTime=ref_time, count=-3)))
            assert (flags, n, seq) == ([0, 0, 0], 3, 8)
            assert [r.logDatum.realValue for r in recs] == [s["v"] for s in his[7:10]]

            # By sequence number, the tail: LAST_ITEM.
            flags, n, seq, recs = await _read_range(
                app, addr, 3,
                Range(bySequenceNumber=RangeBySequenceNumber(referenceSequenceNumber=39, count=10)))
            assert (flags, n, seq) == ([0, 1, 0], 3, 39)
        finally:
            app.close()

    run(go())


def test_a_read_range_larger_than_one_answer_pages_with_more_items(tserver):
    """bacpypes3 accepts 16 segments of 1024 octets: 1,000 records do not fit
    one answer, so it gets a full page with MORE_ITEMS (not an Abort) and
    reads on from there; together the pages are the history."""
    from bacpypes3.basetypes import Range, RangeByPosition
    with urllib.request.urlopen(f"{tserver.http_base}/api/points/memory_usage/history") as r:
        his = json.load(r)["samples"]
    assert len(his) == 1000

    async def go():
        app = client(995)
        addr = target(tserver)
        try:
            flags, n, _, first = await _read_range(
                app, addr, 4, Range(byPosition=RangeByPosition(referenceIndex=1, count=1000)))
            assert flags == [1, 0, 1] and 500 < n < 1000, (flags, n)
            flags, m, _, rest = await _read_range(
                app, addr, 4, Range(byPosition=RangeByPosition(referenceIndex=n + 1, count=1000)))
            # The rest of the samples, then the restart's LOG_INTERRUPTED.
            assert flags == [0, 1, 0] and n + m == 1001, (flags, n, m)
            recs = (first + rest)[:1000]
            assert [r.logDatum.realValue for r in recs] == [s["v"] for s in his]
            assert [_ts(r) for r in recs] == [_sample_ts(s["t"]) for s in his]
        finally:
            app.close()

    run(go())
