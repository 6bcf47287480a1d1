"""BACnet alarms (issue 21) with a real peer: bacpypes3 registers in a Notification Class's Recipient_List, receives the ConfirmedEventNotification when the primary route's UDP input goes silent, acknowledges it with AcknowledgeAlarm, sees the ack in GetEventInformation and GetAlarmSummary, receives the to-normal notification when the input returns; the Recipient_List survives a restart; tshark finds nothing malformed."""
import asyncio
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

from bacpypes3.apdu import (
    AcknowledgeAlarmRequest,
    ErrorRejectAbortNack,
    GetAlarmSummaryACK,
    GetAlarmSummaryRequest,
    GetEventInformationACK,
    GetEventInformationRequest,
    SimpleAckPDU,
)
from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.basetypes import (
    DaysOfWeek,
    Destination,
    DeviceAddress,
    EventTransitionBits,
    Recipient,
    TimeStamp,
)
from bacpypes3.constructeddata import ListOf
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import (
    Boolean,
    CharacterString,
    ObjectIdentifier,
    OctetString,
    Time,
    Unsigned,
)

from conftest import Server, base_config_text

DEVICE = 389001
INPUT_STATUS = "multi-state-value,2"
CLASS = "notification-class,1"


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class TsSource:
    """A paced MPEG-TS source over UDP (null-payload packets on one PID with
    a running continuity counter): media for the route while it runs."""

    def __init__(self, port):
        self.port = port
        self.running = threading.Event()
        self.stop_all = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cc = 0
        while not self.stop_all.is_set():
            if self.running.is_set():
                dgram = b""
                for _ in range(7):
                    dgram += bytes([0x47, 0x01, 0x00, 0x10 | cc]) + bytes(184)
                    cc = (cc + 1) & 0x0F
                sock.sendto(dgram, ("127.0.0.1", self.port))
            time.sleep(0.01)
        sock.close()


class Receiver(Application):
    """bacpypes3 Application that keeps every event notification it gets and
    answers the confirmed ones with a SimpleACK."""

    def setup_events(self):
        self.events = asyncio.Queue()

    async def do_ConfirmedEventNotificationRequest(self, apdu):
        await self.events.put((time.monotonic(), True, apdu))
        await self.response(SimpleAckPDU(context=apdu))

    async def do_UnconfirmedEventNotificationRequest(self, apdu):
        await self.events.put((time.monotonic(), False, apdu))


def receiver(port):
    args = SimpleArgumentParser().parse_args(
        ["--address", f"127.0.0.1/8:{port}", "--instance", "998"])
    app = Receiver.from_args(args)
    app.setup_events()
    return app


def rest(srv, path):
    with urllib.request.urlopen(srv.http_base + path, timeout=5) as r:
        return json.load(r)


def until(what, f, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if f():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def destination(port, confirmed=True):
    mac = socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")
    return Destination(
        validDays=DaysOfWeek([1, 1, 1, 1, 1, 1, 1]),
        fromTime=Time((0, 0, 0, 0)),
        toTime=Time((23, 59, 59, 99)),
        recipient=Recipient(address=DeviceAddress(networkNumber=0, macAddress=OctetString(mac))),
        processIdentifier=Unsigned(7),
        issueConfirmedNotifications=Boolean(confirmed),
        transitions=EventTransitionBits([1, 1, 1]),
    )


async def next_event(app, obj, notify_type, timeout):
    """The next notification about `obj` of `notify_type` (others skipped)."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        assert left > 0, f"no {notify_type} notification for {obj}"
        at, confirmed, apdu = await asyncio.wait_for(app.events.get(), left)
        if apdu.eventObjectIdentifier == ObjectIdentifier(obj) and str(apdu.notifyType) == notify_type:
            return at, confirmed, apdu


async def event_summary(app, addr, obj):
    """The GetEventInformation summary of `obj`, paging with
    Last_Received_Object_Identifier until More_Events is false."""
    last = None
    while True:
        req = GetEventInformationRequest()
        if last is not None:
            req.lastReceivedObjectIdentifier = last
        req.pduDestination = addr
        ack = await app.request(req)
        assert isinstance(ack, GetEventInformationACK), ack
        for s in ack.listOfEventSummaries:
            if s.objectIdentifier == ObjectIdentifier(obj):
                return s
            last = s.objectIdentifier
        if not ack.moreEvents:
            return None


@pytest.fixture
def alarm_server(tmp_path):
    media = free_udp_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text('primary_route = "cam"\n' + base_config_text() + f"""
[telemetry]
enabled = true

[[route]]
name = "cam"
signal_timeout = "500ms"
[[route.input]]
name = "feed"
type = "udp"
bind = "127.0.0.1:{media}"
[[route.output]]
name = "web"
type = "http"
path = "cam"
""")
    src = TsSource(media)
    src.running.set()
    data = str(tmp_path / "data")
    srv = Server(config=cfg, data=data)
    srv.cfg = cfg
    srv.capture = None
    if shutil.which("tshark"):
        srv.pcap = tmp_path / "alarms.pcap"
        srv.capture = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", f"udp port {srv.addrs['bacnet'][1]}", "-w", str(srv.pcap)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in srv.capture.stderr:
            if "Capture started" in line:
                break
        time.sleep(0.5)
    yield srv, src
    if srv.capture and srv.capture.poll() is None:
        srv.capture.terminate()
        srv.capture.wait(timeout=10)
    src.stop_all.set()
    srv.stop()


def test_recipient_gets_notified_acks_and_sees_the_ack(alarm_server):
    srv, src = alarm_server
    until("the input ACTIVE", lambda: rest(srv, "/api/points/input_status").get("state") == "ACTIVE")
    port = free_udp_port()
    host, bport = srv.addrs["bacnet"]
    addr = Address(f"127.0.0.1:{bport}")
    timings = {}

    async def go():
        app = receiver(port)
        try:
            # The route's start may have raised the alarm (NO_SIGNAL before
            # the first packet); it returns after Time_Delay_Normal (2 s).
            # Register only then, so the first alarm notified is ours.
            obj = ObjectIdentifier(INPUT_STATUS)
            end = time.monotonic() + 15
            while str(await app.read_property(addr, obj, "event-state")) != "normal":
                assert time.monotonic() < end, "the input's alarm did not return to normal"
                await asyncio.sleep(0.1)
            nc = ObjectIdentifier(CLASS)
            # The class as configured: priorities and the acks it requires.
            prio = await app.read_property(addr, nc, "priority")
            assert list(prio) == [64, 64, 200], prio
            ack_req = await app.read_property(addr, nc, "ack-required")
            assert list(ack_req) == [1, 1, 0], ack_req
            # Register as a confirmed recipient.
            dests = ListOf(Destination)([destination(port)])
            await app.write_property(addr, nc, "recipient-list", dests)
            back = await app.read_property(addr, nc, "recipient-list")
            assert len(back) == 1 and back[0].processIdentifier == 7
            assert back[0].recipient.address.macAddress == dests[0].recipient.address.macAddress
            # The class number is configuration: refused, not changed.
            try:
                await app.write_property(addr, nc, "notification-class", Unsigned(9))
                raise AssertionError("notification-class write accepted")
            except ErrorRejectAbortNack as e:
                assert "write-access-denied" in str(e), e
            # The input's object advertises intrinsic reporting.
            assert await app.read_property(addr, obj, "notification-class") == 1
            assert list(await app.read_property(addr, obj, "alarm-values")) == [2, 3]
            assert str(await app.read_property(addr, obj, "event-state")) == "normal"

            # The input goes silent.
            src.running.clear()
            t0 = time.monotonic()
            at, confirmed, ev = await next_event(app, INPUT_STATUS, "alarm", 10)
            timings["offnormal"] = at - t0
            assert confirmed
            assert ev.initiatingDeviceIdentifier == ObjectIdentifier(f"device,{DEVICE}")
            assert ev.processIdentifier == 7
            assert ev.notificationClass == 1 and ev.priority == 64
            assert str(ev.eventType) == "change-of-state"
            assert ev.ackRequired
            assert (str(ev.fromState), str(ev.toState)) == ("normal", "offnormal")
            assert ev.eventValues.changeOfState.newState.unsignedValue == 2  # NO_SIGNAL
            ts = ev.timeStamp
            assert ts.dateTime is not None
            assert str(await app.read_property(addr, obj, "event-state")) == "offnormal"
            flags = await app.read_property(addr, obj, "status-flags")
            assert flags[0] == 1, f"in-alarm: {flags}"

            # Listed, to-offnormal unacknowledged.
            s = await event_summary(app, addr, INPUT_STATUS)
            assert s is not None and str(s.eventState) == "offnormal"
            assert list(s.acknowledgedTransitions)[0] == 0
            assert s.eventTimeStamps[0].dateTime == ts.dateTime
            assert list(s.eventPriorities) == [64, 64, 200]
            req = GetAlarmSummaryRequest()
            req.pduDestination = addr
            summ = await app.request(req)
            assert isinstance(summ, GetAlarmSummaryACK), summ
            assert any(a.objectIdentifier == obj for a in summ.listOfAlarmSummaries)

            # A stale time stamp is refused (13.5: INVALID_TIME_STAMP).
            bad = AcknowledgeAlarmRequest(
                acknowledgingProcessIdentifier=Unsigned(7), eventObjectIdentifier=obj,
                eventStateAcknowledged="offnormal", timeStamp=TimeStamp(sequenceNumber=1),
                acknowledgmentSource=CharacterString("interop"),
                timeOfAcknowledgment=TimeStamp(sequenceNumber=2))
            bad.pduDestination = addr
            try:
                await app.request(bad)
                raise AssertionError("ack with a wrong time stamp accepted")
            except ErrorRejectAbortNack as e:
                assert "invalid-time-stamp" in str(e), e

            ack = AcknowledgeAlarmRequest(
                acknowledgingProcessIdentifier=Unsigned(7), eventObjectIdentifier=obj,
                eventStateAcknowledged="offnormal", timeStamp=ts,
                acknowledgmentSource=CharacterString("interop"),
                timeOfAcknowledgment=TimeStamp(sequenceNumber=3))
            ack.pduDestination = addr
            r = await app.request(ack)
            assert isinstance(r, SimpleAckPDU), r
            # The recipient is told of the acknowledgement.
            _, _, an = await next_event(app, INPUT_STATUS, "ack-notification", 5)
            assert str(an.toState) == "offnormal"
            # The ack shows everywhere at once: Acked_Transitions, the
            # summary, and castpoint's other surfaces (REST).
            acked = await app.read_property(addr, obj, "acked-transitions")
            assert list(acked)[0] == 1, acked
            s = await event_summary(app, addr, INPUT_STATUS)
            assert s is not None and list(s.acknowledgedTransitions)[0] == 1

            # The input returns: to-normal after Time_Delay_Normal (2 s).
            src.running.set()
            t1 = time.monotonic()
            at, confirmed, ev = await next_event(app, INPUT_STATUS, "alarm", 15)
            timings["normal"] = at - t1
            assert (str(ev.fromState), str(ev.toState)) == ("offnormal", "normal")
            assert not ev.ackRequired and ev.priority == 200
            assert str(await app.read_property(addr, obj, "event-state")) == "normal"

            # An unconfirmed recipient gets UnconfirmedEventNotification.
            await app.write_property(addr, nc, "recipient-list",
                                     ListOf(Destination)([destination(port, confirmed=False)]))
            src.running.clear()
            _, confirmed, ev = await next_event(app, INPUT_STATUS, "alarm", 10)
            assert not confirmed
            assert (str(ev.fromState), str(ev.toState)) == ("normal", "offnormal")
            assert ev.processIdentifier == 7 and ev.ackRequired
            src.running.set()
        finally:
            app.close()

    asyncio.run(asyncio.wait_for(go(), 90))
    print(f"offnormal notified {timings['offnormal']:.2f} s after the input stopped; "
          f"to-normal {timings['normal']:.2f} s after it returned")
    assert timings["offnormal"] < 2.0, timings

    if srv.capture:
        # SIGINT: tshark stops the capture and writes out what it buffered
        # (SIGTERM loses the tail of the run).
        time.sleep(0.5)
        srv.capture.send_signal(signal.SIGINT)
        srv.capture.wait(timeout=10)
        out = subprocess.run(
            ["tshark", "-r", str(srv.pcap), "-d", f"udp.port=={bport},bvlc", "-T", "fields",
             "-e", "bacapp.confirmed_service", "-e", "bacapp.unconfirmed_service", "-e", "_ws.malformed"],
            capture_output=True, text=True, check=True).stdout
        rows = [r.split("\t") for r in out.splitlines()]
        malformed = [r for r in rows if len(r) > 2 and r[2]]
        # confirmed 2 = confirmedEventNotification, 0 = acknowledgeAlarm;
        # unconfirmed 3 = unconfirmedEventNotification.
        services = {r[0] for r in rows}
        print(f"tshark: {len(rows)} BACnet frames, {len(malformed)} malformed")
        assert "2" in services and "0" in services, services
        assert "3" in {r[1] for r in rows if len(r) > 1}, sorted({tuple(r) for r in rows})
        assert malformed == [], malformed


def test_recipient_list_survives_a_restart(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(base_config_text())
    data = str(tmp_path / "data")
    port = free_udp_port()

    async def write(srv):
        app = receiver(free_udp_port())
        try:
            addr = Address(f"127.0.0.1:{srv.addrs['bacnet'][1]}")
            await app.write_property(addr, ObjectIdentifier("notification-class,2"), "recipient-list",
                                     ListOf(Destination)([destination(port, confirmed=False)]))
        finally:
            app.close()

    async def read(srv):
        app = receiver(free_udp_port())
        try:
            addr = Address(f"127.0.0.1:{srv.addrs['bacnet'][1]}")
            return await app.read_property(addr, ObjectIdentifier("notification-class,2"),
                                           "recipient-list")
        finally:
            app.close()

    srv = Server(config=cfg, data=data)
    try:
        asyncio.run(asyncio.wait_for(write(srv), 30))
    finally:
        srv.stop()
    srv = Server(config=cfg, data=data)
    try:
        got = asyncio.run(asyncio.wait_for(read(srv), 30))
        assert len(got) == 1
        assert got[0].issueConfirmedNotifications == 0 or not got[0].issueConfirmedNotifications
        mac = socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")
        assert got[0].recipient.address.macAddress == mac
    finally:
        srv.stop()
    assert list(pathlib.Path(data).glob("bacnet-notification-class-2.rcp")), "no file kept it"


def test_an_unanswered_confirmed_notification_is_retried(alarm_server):
    """A recipient that never answers gets the ConfirmedEventNotification
    1 + Number_Of_APDU_Retries times, APDU_Timeout apart, same invoke id."""
    srv, src = alarm_server
    until("the input ACTIVE", lambda: rest(srv, "/api/points/input_status").get("state") == "ACTIVE")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.settimeout(0.2)
    addr = Address(f"127.0.0.1:{srv.addrs['bacnet'][1]}")

    async def setup():
        app = receiver(free_udp_port())
        try:
            obj = ObjectIdentifier(INPUT_STATUS)
            end = time.monotonic() + 15
            while str(await app.read_property(addr, obj, "event-state")) != "normal":
                assert time.monotonic() < end
                await asyncio.sleep(0.1)
            dev = ObjectIdentifier(f"device,{DEVICE}")
            timeout = await app.read_property(addr, dev, "apdu-timeout")
            retries = await app.read_property(addr, dev, "number-of-apdu-retries")
            await app.write_property(addr, ObjectIdentifier(CLASS), "recipient-list",
                                     ListOf(Destination)([destination(silent.getsockname()[1])]))
            return int(timeout), int(retries)
        finally:
            app.close()

    try:
        timeout_ms, retries = asyncio.run(asyncio.wait_for(setup(), 30))
        src.running.clear()
        got = []
        end = time.monotonic() + 3 + (retries + 1) * timeout_ms / 1000 + 2
        while time.monotonic() < end:
            try:
                data = silent.recv(2048)
            except socket.timeout:
                continue
            # BVLC (4) + NPDU version/control (2), then the APDU: a
            # Confirmed-Request (type 0) of service 2 about Input Status
            # ([2] event object MSV2; Stream Status, class 1 too, follows).
            apdu = data[6:]
            msv2 = bytes([0x2C]) + ((19 << 22) | 2).to_bytes(4, "big")
            if len(apdu) > 4 and apdu[0] >> 4 == 0 and apdu[3] == 2 and msv2 in apdu:
                got.append((time.monotonic(), apdu[2]))
        print(f"APDU_Timeout {timeout_ms} ms, retries {retries}: {len(got)} sends, "
              f"gaps {[round(b[0] - a[0], 2) for a, b in zip(got, got[1:])]}")
        assert len(got) == retries + 1, got
        assert len({i for _, i in got}) == 1, "one transaction, one invoke id"
        for a, b in zip(got, got[1:]):
            assert b[0] - a[0] >= timeout_ms / 1000 * 0.8, got
    finally:
        silent.close()
