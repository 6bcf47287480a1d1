"""MQTT Sparkplug B interop: castpoint as an edge node on a real Mosquitto broker, checked by pysparkplug (a Sparkplug host application over paho-mqtt)."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import paho.mqtt.client as paho
import pysparkplug as spb
import pytest
from pysparkplug._protobuf import Payload as PbPayload

from conftest import Server

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None,
                                reason="mosquitto not installed (apt-get install mosquitto)")

GROUP = "interop"
HOST_ID = "scada"
QUIET = (pathlib.Path(__file__).parent / "quiet.toml").read_text()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Broker:
    """A Debian mosquitto on 127.0.0.1:<free port>, restartable on the same port."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="castpoint-mqtt-")
        self.log = pathlib.Path(self.dir, "mosquitto.log")
        self.conf = pathlib.Path(self.dir, "mosquitto.conf")
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            # `user root`: stay the user that owns this private temp dir, so
            # the log file (flushed per line, unlike a piped stdout) opens.
            f"user root\nlog_dest file {self.log}\nlog_type all\n")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait(up, 10, "mosquitto to listen")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Host:
    """A Sparkplug Primary Host: pysparkplug's Client decoding every message
    of the group (aliases resolved from the births), publishing its STATE
    (retained, with an offline will) on every connect, as spB 3.0 asks."""

    def __init__(self, port):
        self.msgs = []
        self.devs = []  # the device id of each message (None: node)
        self.cv = threading.Condition()
        self.client = spb.Client(
            client_id=f"host-{uuid.uuid4().hex[:8]}",
            client_options=spb.ClientOptions(reconnection_delay_min=1, reconnection_delay_max=1))
        # spB 3.0: the will and the online STATE carry the same timestamp
        # (an edge node ignores a STATE older than the newest it has seen).
        self.state = spb.Topic.from_str(f"spBv1.0/STATE/{HOST_ID}")
        self.ts = spb.get_current_timestamp()
        self.client.set_will(self._state(False))

        def online(client):
            client.publish(self._state(True))

        self.client.subscribe(spb.Topic.from_str(f"spBv1.0/{GROUP}/#"), spb.QoS.AT_MOST_ONCE,
                              self._on)
        self.client.connect("127.0.0.1", port=port, blocking=False, callback=online)

    def _state(self, online):
        return spb.Message(topic=self.state, payload=spb.State(timestamp=self.ts, online=online),
                           qos=spb.QoS.AT_LEAST_ONCE, retain=True)

    def _on(self, _client, msg):
        with self.cv:
            self.msgs.append((str(msg.topic.message_type), msg.payload, time.time()))
            self.devs.append(msg.topic.device_id)
            self.cv.notify_all()

    def of(self, kind, device=None):
        """Payloads of one message type (of one device: `device`)."""
        with self.cv:
            return [p for (k, p, _), d in zip(self.msgs, self.devs)
                    if k == kind and (device is None or d == device)]

    def wait_for(self, kind, pred=lambda p: True, timeout=30, device=None):
        return wait(lambda: next((p for p in self.of(kind, device) if pred(p)), None), timeout,
                    f"{kind} matching the test's condition")

    def dcmd(self, device, metrics):
        self.client.publish(spb.Message(
            topic=spb.Topic(group_id=GROUP, message_type=spb.MessageType.DCMD,
                            edge_node_id="node1", device_id=device),
            payload=spb.DCmd(timestamp=spb.get_current_timestamp(), metrics=tuple(metrics)),
            qos=spb.QoS.AT_MOST_ONCE, retain=False), include_dtypes=True)

    def ncmd(self, metrics):
        self.client.publish(spb.Message(
            topic=spb.Topic(group_id=GROUP, message_type=spb.MessageType.NCMD,
                            edge_node_id="node1"),
            payload=spb.NCmd(timestamp=spb.get_current_timestamp(), metrics=tuple(metrics)),
            qos=spb.QoS.AT_MOST_ONCE, retain=False), include_dtypes=True)

    def close(self):
        # A clean disconnect sends no will: say offline first (spB 3.0),
        # which also leaves no retained "online" for the next test.
        m = self._state(False)
        # pysparkplug's publish does not hand back paho's MessageInfo; its
        # paho client does, so the test can wait for the PUBACK.
        self.client._client.publish(str(m.topic), m.payload.encode(), qos=1,
                                    retain=True).wait_for_publish(5)
        self.client.disconnect()


class RawSub:
    """A plain paho subscriber keeping raw payloads (properties are not in
    pysparkplug's Metric) and seeing what arrives before any host is up."""

    def __init__(self, port, topic):
        self.msgs = []
        self.c = paho.Client(client_id=f"raw-{uuid.uuid4().hex[:8]}")
        self.c.on_connect = lambda c, *_: c.subscribe(topic, 0)
        self.c.on_message = lambda _c, _u, m: self.msgs.append((m.topic, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait(lambda: self.c.is_connected(), 10, "raw subscriber")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def broker():
    b = Broker()
    yield b
    if b.proc.poll() is None:
        b.stop()
    shutil.rmtree(b.dir, ignore_errors=True)


def node_config(tmp, brokers, extra=""):
    cfg = pathlib.Path(tmp, "castpoint.toml")
    urls = ", ".join(f'"mqtt://127.0.0.1:{p}"' for p in brokers)
    cfg.write_text(QUIET + f"""
[mqtt]
enabled = true
brokers = [{urls}]
group_id = "{GROUP}"
edge_node_id = "node1"
primary_host_id = "{HOST_ID}"
reconnect_max = "1s"
keep_alive = "5s"
command_priority = 9
{extra}""")
    return cfg


def http_get(server, path):
    with urllib.request.urlopen(server.http_base + path, timeout=5) as r:
        return json.load(r)


def http_post(server, path, body):
    req = urllib.request.Request(server.http_base + path, data=json.dumps(body).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def metric_value(m):
    return None if m.is_null else m.value


def api_value(p):
    return p["value"]


def host_view(host):
    """The host's picture of the node: the last NBIRTH with every later
    live (non-historical) NDATA applied, by metric name."""
    births = host.of("NBIRTH")
    if not births:
        return {}
    with host.cv:
        seq = [(k, p) for k, p, _ in host.msgs]
    last = max(i for i, (k, _) in enumerate(seq) if k == "NBIRTH")
    view = {m.name: m for m in seq[last][1].metrics}
    for k, p in seq[last + 1:]:
        if k == "NDATA":
            for m in p.metrics:
                if not m.is_historical:
                    view[m.name] = m
    return view


@pytest.fixture
def node(broker, tmp_path):
    host = Host(broker.port)
    s = Server(config=node_config(tmp_path, [free_port(), broker.port]))
    yield s, host
    s.stop()
    host.close()


def bdseq(payload):
    return next(m.value for m in payload.metrics if m.name == "bdSeq")


def test_nbirth_has_every_point_as_on_the_api(node, broker):
    """Every /api/points point is an NBIRTH metric with the same value,
    datatype, unit and description (the first broker of the list is down:
    failover to the second)."""
    s, host = node
    birth = host.wait_for("NBIRTH")
    assert birth.seq == 0
    assert isinstance(bdseq(birth), int)
    names = {m.name for m in birth.metrics}
    assert "Node Control/Rebirth" in names
    pts = http_get(s, "/api/points")
    assert len(pts) == 23
    assert {p["id"] for p in pts} <= names

    def same():
        view = host_view(host)
        now = {p["id"]: p for p in http_get(s, "/api/points")}
        return all(pid in view and metric_value(view[pid]) == api_value(p)
                   for pid, p in now.items())
    wait(same, 15, "the host's view (NBIRTH + NDATA) to equal /api/points")
    dtypes = {"number": spb.DataType.DOUBLE, "bool": spb.DataType.BOOLEAN,
              "enum": spb.DataType.UINT16}
    by_name = {m.name: m for m in birth.metrics}
    for p in pts:
        assert by_name[p["id"]].datatype == dtypes[p["kind"]], p["id"]
    # Properties, from the raw protobuf (a retained-free re-birth on request).
    raw = RawSub(broker.port, f"spBv1.0/{GROUP}/NBIRTH/node1")
    try:
        host.ncmd([spb.Metric(timestamp=spb.get_current_timestamp(), name="Node Control/Rebirth",
                              datatype=spb.DataType.BOOLEAN, value=True)])
        wait(lambda: raw.msgs, 15, "NBIRTH after a Rebirth request")
        pb = PbPayload.FromString(raw.msgs[0][1])
    finally:
        raw.close()
    assert pb.seq == 0
    props = {m.name: dict(zip(m.properties.keys, m.properties.values)) for m in pb.metrics}
    for p in pts:
        pr = props[p["id"]]
        assert pr["description"].string_value == p["description"], p["id"]
        if p["unit"] is not None:
            assert pr["engUnit"].string_value == p["unit"], p["id"]
        else:
            assert "engUnit" not in pr
        assert pr["readOnly"].boolean_value == (not p["writable"])
        want_q = {"ok": 192, "overridden": 192, "stale": 500}.get(p["status"], 0)
        assert pr["Quality"].int_value == want_q, p["id"]
    # The Rebirth request kept the bdSeq (same connection).
    assert bdseq(host.of("NBIRTH")[-1]) == bdseq(birth)


def test_no_birth_before_the_primary_host_is_online(broker, tmp_path):
    raw = RawSub(broker.port, f"spBv1.0/{GROUP}/#")
    seen = len(broker.log_text())
    s = Server(config=node_config(tmp_path, [broker.port]))
    host = None
    try:
        # castpoint is connected and subscribed to the host's STATE (this
        # run's lines of the broker log only)...
        def subscribed():
            log = broker.log_text()[seen:]
            i = log.find("Received SUBSCRIBE from castpoint-interop-node1")
            return i >= 0 and f"spBv1.0/STATE/{HOST_ID} (QoS 1)" in log[i:]
        wait(subscribed, 15, "castpoint's subscription to the STATE topic")
        time.sleep(1.0)  # a negative check: give a wrong birth time to show
        assert raw.msgs == [], "births before the Primary Host said online"
        host = Host(broker.port)
        host.wait_for("NBIRTH")
    finally:
        s.stop()
        raw.close()
        if host:
            host.close()


def test_ncmd_writes_the_point_and_is_audited(node):
    s, host = node
    host.wait_for("NBIRTH")
    host.ncmd([spb.Metric(timestamp=spb.get_current_timestamp(), name="input_select",
                          datatype=spb.DataType.DOUBLE, value=4.0)])
    wait(lambda: http_get(s, "/api/points/input_select")["value"] == 4, 15,
         "input_select = 4 through NCMD")
    audit = http_get(s, "/api/audit?target=input_select&limit=10")["events"]
    assert any(e["protocol"] == "mqtt" and e["result"] == "ok" for e in audit), audit
    pa = http_get(s, "/api/points/input_select")
    assert pa["level"] == 9, pa  # [mqtt] command_priority
    # The change comes back as NDATA (report by exception).
    host.wait_for("NDATA", lambda p: any(m.name == "input_select" and m.value == 4.0
                                         for m in p.metrics))
    # A read-only metric: refused, audited with source mqtt, unchanged.
    before = http_get(s, "/api/points/cpu_usage")["value"]
    host.ncmd([spb.Metric(timestamp=spb.get_current_timestamp(), name="cpu_usage",
                          datatype=spb.DataType.DOUBLE, value=50.0)])

    def refused():
        ev = http_get(s, "/api/audit?target=cpu_usage&limit=10")["events"]
        return [e for e in ev if e["protocol"] == "mqtt" and e["result"] != "ok"]
    wait(refused, 15, "the refused NCMD in the audit log")
    assert http_get(s, "/api/points/cpu_usage")["value"] == before


def test_sigkill_makes_the_broker_publish_ndeath_with_the_birth_bdseq(broker, tmp_path):
    host = Host(broker.port)
    s = Server(config=node_config(tmp_path, [broker.port]))
    try:
        b = bdseq(host.wait_for("NBIRTH"))
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=10)
        # Keep-alive 5 s: the broker notices the dead socket at once (RST)
        # or within 1.5 keep-alives at most.
        death = host.wait_for("NDEATH", timeout=20)
        assert death.bd_seq_metric.value == b
    finally:
        s.stop()
        host.close()


def test_clean_stop_publishes_ndeath_first(broker, tmp_path):
    """SIGTERM: castpoint publishes its own NDEATH (spB 3.0: before an
    intentional disconnect), with the bdSeq of its birth."""
    host = Host(broker.port)
    s = Server(config=node_config(tmp_path, [broker.port]))
    try:
        b = bdseq(host.wait_for("NBIRTH"))
        s.stop()
        assert s.proc.returncode == 0, s.proc.returncode
        assert host.wait_for("NDEATH", timeout=15).bd_seq_metric.value == b
    finally:
        s.stop()
        host.close()


def test_broker_outage_rebirth_and_history(broker, tmp_path):
    """A 10 s broker outage: castpoint reconnects with a new bdSeq, births
    again (node and route device), and every value changed during the
    outage arrives afterwards as historical NDATA (server point) and DDATA
    (route point), none missing."""
    host = Host(broker.port)
    route = ('\n[[route]]\nname = "cam"\nslot = 1\n[[route.input]]\nname = "gen"\n'
             'type = "generator"\nbitrate = 500000\n[[route.output]]\nname = "web"\n'
             'type = "http"\npath = "cam"\n')
    s = Server(config=node_config(tmp_path, [broker.port], route))
    try:
        b0 = bdseq(host.wait_for("NBIRTH"))
        host.wait_for("DBIRTH", device="route-1")
        n_births = len(host.of("NBIRTH"))
        n_dbirths = len(host.of("DBIRTH", "route-1"))
        broker.stop()
        written = []
        t_end = time.time() + 10
        v = 1
        while time.time() < t_end:
            http_post(s, "/api/points/input_select", {"value": v})
            http_post(s, "/api/routes/cam/points/output_profile", {"value": v})
            written.append(float(v))
            v = v % 16 + 1
            time.sleep(0.5)
        broker.start()
        birth = host.wait_for("NBIRTH", lambda p: bdseq(p) != b0, timeout=60)
        assert len(host.of("NBIRTH")) > n_births
        b1 = bdseq(birth)
        assert (b1 - b0) % 256 >= 1, (b0, b1)
        wait(lambda: len(host.of("DBIRTH", "route-1")) > n_dbirths, 30, "route-1 born again")

        def historical(kind, name, device=None):
            got = []
            for p in host.of(kind, device):
                got += [m.value for m in p.metrics if m.name == name and m.is_historical]
            return got if len(got) >= len(written) else None
        got = wait(lambda: historical("NDATA", "input_select"), 30,
                   "every outage value as historical NDATA")
        # In order, none missing (a value sent just before the loss may be
        # repeated first: the resend window of session.rs).
        assert got[-len(written):] == written, (got, written)
        got = wait(lambda: historical("DDATA", "output_profile", "route-1"), 30,
                   "every outage value of the route as historical DDATA")
        assert got[-len(written):] == written, (got, written)
    finally:
        if broker.proc.poll() is not None:
            broker.start()
        s.stop()
        host.close()


def test_check_config_refuses_bad_mqtt_keys(tmp_path):
    from conftest import castpoint_bin
    cfg = tmp_path / "castpoint.toml"
    cfg.write_text('[mqtt]\nbrokers = ["mqtt://u:hunter2@h:1883"]\ncommand_priority = 0\n'
                   'typo = 1\n')
    r = subprocess.run([castpoint_bin(), "check-config", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    assert "mqtt" in r.stdout + r.stderr
    assert "hunter2" not in r.stdout + r.stderr


def test_mqtts_with_a_private_ca_and_credentials(tmp_path):
    """mqtts:// through rustls with only the configured CA, and a broker
    that refuses anonymous clients: the node births with its credentials."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="castpoint-mqtts-"))
    os.chmod(d, 0o755)  # mosquitto drops root for user mosquitto
    ssl = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True,  # noqa: E731
                                    capture_output=True)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=castpoint-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "san.ext")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "node", "s3cret-pw"],
                   check=True, capture_output=True)
    for f in d.iterdir():
        os.chmod(f, 0o644)
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/srv.pem\n"
                    f"keyfile {d}/srv.key\nallow_anonymous false\npassword_file {d}/passwd\n"
                    "persistence false\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    s = None
    sub = paho.Client(client_id="tls-host")
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait(up, 10, "mosquitto (TLS) to listen")
        got = []
        sub.tls_set(ca_certs=str(d / "ca.pem"))
        sub.username_pw_set("node", "s3cret-pw")
        sub.on_connect = lambda c, *_: c.subscribe(f"spBv1.0/{GROUP}/NBIRTH/node1", 0)
        sub.on_message = lambda _c, _u, m: got.append(m.payload)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        cfg = tmp_path / "castpoint.toml"
        cfg.write_text(QUIET + f"""
[mqtt]
enabled = true
brokers = ["mqtts://127.0.0.1:{port}"]
group_id = "{GROUP}"
edge_node_id = "node1"
username = "node"
password = "s3cret-pw"
ca_file = "{d}/ca.pem"
reconnect_max = "1s"
""")
        s = Server(config=cfg)
        wait(lambda: got, 30, "NBIRTH over mqtts://")
        birth = spb.NBirth.decode(got[0])
        assert any(m.name == "cpu_usage" for m in birth.metrics)
    finally:
        sub.loop_stop()
        if s:
            s.stop()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


class UdpSink:
    """A UDP receiver on 127.0.0.1:<free port> counting bytes, with the time
    of the last datagram (a route's UDP output sends here)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.bytes = 0
        self.last = 0.0
        self.running = True
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while self.running:
            try:
                n = len(self.sock.recv(65536))
            except OSError:
                continue
            self.bytes += n
            self.last = time.time()

    def close(self):
        self.running = False
        self.t.join(5)
        self.sock.close()


def udp_route(name, slot, port):
    return (f'\n[[route]]\nname = "{name}"\nslot = {slot}\n'
            '[[route.input]]\nname = "gen"\ntype = "generator"\nbitrate = 1000000\n'
            f'[[route.output]]\nname = "lan"\ntype = "udp"\ndest = "127.0.0.1:{port}"\n')


def device_name(point_id):
    """The metric name of a route point in its device: `route.<s>.<id>` ->
    `<id>`, `route.<s>.<id>.<n>` -> `output/<n>/<id>` (docs/mqtt.md)."""
    parts = point_id.split(".")
    return parts[2] if len(parts) == 3 else f"output/{parts[3]}/{parts[2]}"


def device_view(host, device):
    """The host's picture of one device: its last DBIRTH with every later
    live DDATA of that device applied, by metric name."""
    with host.cv:
        seq = [(k, p) for (k, p, _), d in zip(host.msgs, host.devs) if d == device]
    births = [i for i, (k, _) in enumerate(seq) if k == "DBIRTH"]
    if not births:
        return {}
    view = {m.name: m for m in seq[births[-1]][1].metrics}
    for k, p in seq[births[-1] + 1:]:
        if k == "DDATA":
            for m in p.metrics:
                if not m.is_historical:
                    view[m.name] = m
    return view


def test_route_devices_birth_and_a_dcmd_stops_route_2_on_the_wire(broker, tmp_path):
    """Each route is a device `route-<slot>`: its DBIRTH carries every point
    of /api/routes/{r}/points (value, datatype, description, unit,
    read-only, point id); a DCMD writing route 2's Route Enable = false
    (audited, source mqtt, at the configured priority) stops route 2's UDP
    output while route 1 keeps flowing; a read-only metric is refused and
    audited; a Rebirth re-sends every DBIRTH."""
    sink1, sink2 = UdpSink(), UdpSink()
    host = Host(broker.port)
    cfg = node_config(tmp_path, [broker.port],
                      udp_route("one", 1, sink1.port) + udp_route("two", 2, sink2.port))
    s = Server(config=cfg)
    try:
        host.wait_for("NBIRTH")
        b1 = host.wait_for("DBIRTH", device="route-1")
        b2 = host.wait_for("DBIRTH", device="route-2")
        assert {m.name: m.value for m in b1.metrics}["Device Info/Route Name"] == "one"
        assert {m.name: m.value for m in b2.metrics}["Device Info/Route Name"] == "two"
        nb = host.of("NBIRTH")[-1]
        assert not any(m.name.startswith("route.") for m in nb.metrics), "route points in NBIRTH"
        pts = http_get(s, "/api/routes/two/points")["points"]
        assert len(pts) == len(b2.metrics) - 1
        dtypes = {"number": spb.DataType.DOUBLE, "bool": spb.DataType.BOOLEAN,
                  "enum": spb.DataType.UINT16}
        by_name = {m.name: m for m in b2.metrics}
        for p in pts:
            assert by_name[device_name(p["id"])].datatype == dtypes[p["kind"]], p["id"]

        def same():
            view = device_view(host, "route-2")
            now = http_get(s, "/api/routes/two/points")["points"]
            return all(device_name(p["id"]) in view
                       and metric_value(view[device_name(p["id"])]) == api_value(p) for p in now)
        wait(same, 15, "route-2's DBIRTH + DDATA to equal /api/routes/two/points")
        # Properties, from the raw DBIRTH a Rebirth request re-sends.
        raw = RawSub(broker.port, f"spBv1.0/{GROUP}/+/node1/#")
        try:
            host.ncmd([spb.Metric(timestamp=spb.get_current_timestamp(),
                                  name="Node Control/Rebirth", datatype=spb.DataType.BOOLEAN,
                                  value=True)])
            wait(lambda: {"DBIRTH/node1/route-1", "DBIRTH/node1/route-2"}
                 <= {t.split("/", 2)[2] for t, _ in raw.msgs}, 15, "every DBIRTH again")
            pb = next(PbPayload.FromString(p) for t, p in raw.msgs if t.endswith("/route-2"))
        finally:
            raw.close()
        props = {m.name: dict(zip(m.properties.keys, m.properties.values)) for m in pb.metrics}
        for p in pts:
            pr = props[device_name(p["id"])]
            assert pr["pointId"].string_value == p["id"]
            assert pr["description"].string_value == p["description"], p["id"]
            if p["unit"] is not None:
                assert pr["engUnit"].string_value == p["unit"], p["id"]
            assert pr["readOnly"].boolean_value == (not p["writable"]), p["id"]
        # Both routes deliver on the wire.
        wait(lambda: sink1.bytes > 0 and sink2.bytes > 0, 20, "both UDP outputs to deliver")
        host.dcmd("route-2", [spb.Metric(timestamp=spb.get_current_timestamp(),
                                         name="route_enable", datatype=spb.DataType.BOOLEAN,
                                         value=False)])
        wait(lambda: http_get(s, "/api/routes/two/points/route_enable")["value"] is False, 15,
             "route 2's Route Enable = false through DCMD")
        pa = http_get(s, "/api/routes/two/points/route_enable")
        assert pa["level"] == 9, pa  # [mqtt] command_priority
        audit = http_get(s, "/api/audit?target=route.2.route_enable&limit=10")["events"]
        assert any(e["protocol"] == "mqtt" and e["result"] == "ok" for e in audit), audit
        host.wait_for("DDATA", lambda p: any(m.name == "route_enable" and m.value is False
                                             for m in p.metrics), device="route-2")
        # Route 2 goes quiet (what was in flight drains), route 1 flows on.
        wait(lambda: time.time() - sink2.last > 2.0, 20, "route 2's UDP output to stop")
        b2_before, b1_before = sink2.bytes, sink1.bytes
        # A window of about 2 s of route 1's 1 Mbit/s (250 kB) during which
        # route 2 must deliver nothing.
        wait(lambda: sink1.bytes > b1_before + 250000, 20, "route 1 to keep delivering")
        assert sink2.bytes == b2_before, "route 2 delivered after Route Enable = false"
        assert http_get(s, "/api/routes/one/points/route_enable")["value"] is True
        # A read-only route metric: refused and audited, unchanged.
        host.dcmd("route-2", [spb.Metric(timestamp=spb.get_current_timestamp(),
                                         name="route_uptime", datatype=spb.DataType.DOUBLE,
                                         value=1.0)])

        def refused():
            ev = http_get(s, "/api/audit?target=route.2.route_uptime&limit=10")["events"]
            return [e for e in ev if e["protocol"] == "mqtt" and e["result"] != "ok"]
        wait(refused, 15, "the refused DCMD in the audit log")
        # Back on: route 2 delivers again.
        host.dcmd("route-2", [spb.Metric(timestamp=spb.get_current_timestamp(),
                                         name="route_enable", datatype=spb.DataType.BOOLEAN,
                                         value=True)])
        wait(lambda: sink2.bytes > b2_before, 20, "route 2 to deliver again")
    finally:
        s.stop()
        host.close()
        sink1.close()
        sink2.close()


def test_route_devices_follow_rest_create_and_delete(broker, tmp_path):
    """A route created through REST is born as its slot's device; deleting
    it publishes its DDEATH (with the node's next seq), and its device no
    longer publishes."""
    host = Host(broker.port)
    s = Server(config=node_config(tmp_path, [broker.port]))
    try:
        host.wait_for("NBIRTH")
        doc = {"name": "late", "slot": 5,
               "input": [{"name": "gen", "type": "generator", "bitrate": 500000}],
               "output": [{"name": "web", "type": "http", "path": "late"}]}
        http_post(s, "/api/routes", doc)
        birth = host.wait_for("DBIRTH", device="route-5")
        assert {m.name: m.value for m in birth.metrics}["Device Info/Route Name"] == "late"
        req = urllib.request.Request(s.http_base + "/api/routes/late", method="DELETE")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 204
        death = host.wait_for("DDEATH", device="route-5")
        # One seq counter for N and D messages: the DDEATH follows the
        # message before it (QoS 0 from one client arrives in order).
        with host.cv:
            seq = [(k, p) for k, p, _ in host.msgs if k != "NDEATH"]
        i = next(i for i, (k, p) in enumerate(seq) if p is death)
        assert seq[i - 1][0] in ("NBIRTH", "DBIRTH", "NDATA", "DDATA"), seq[i - 1][0]
        assert death.seq == (seq[i - 1][1].seq + 1) % 256, (seq[i - 1], death.seq)
        n = len(host.of("DDATA", "route-5"))
        time.sleep(1.5)  # a negative check: a deleted device stays silent
        assert len(host.of("DDATA", "route-5")) == n
    finally:
        s.stop()
        host.close()


def test_bdseq_goes_on_increasing_across_restarts(broker, tmp_path):
    """bdSeq is kept in the data dir: a clean restart and a SIGKILL restart
    both birth with the next bdSeq, never from 0 again (spB 3.0: the will
    of each CONNECT and its NBIRTH carry the same bdSeq)."""
    host = Host(broker.port)
    cfg = node_config(tmp_path, [broker.port])
    data = tempfile.mkdtemp(prefix="castpoint-interop-")
    s = Server(config=cfg, data=data)
    try:
        b0 = bdseq(host.wait_for("NBIRTH"))
        s.stop()
        assert host.wait_for("NDEATH", lambda p: p.bd_seq_metric.value == b0, timeout=15)
        s = Server(config=cfg, data=data)
        b1 = bdseq(host.wait_for("NBIRTH", lambda p: bdseq(p) != b0))
        assert b1 == (b0 + 1) % 256, (b0, b1)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=10)
        assert host.wait_for("NDEATH", lambda p: p.bd_seq_metric.value == b1, timeout=20)
        s = Server(config=cfg, data=data)
        b2 = bdseq(host.wait_for("NBIRTH", lambda p: bdseq(p) not in (b0, b1)))
        assert b2 == (b1 + 1) % 256, (b1, b2)
    finally:
        s.stop()
        host.close()
        shutil.rmtree(data, ignore_errors=True)


def test_fleet_demo_prints_nodes_and_route_devices_from_the_broker():
    """simulators/fleet.py: 2 nodes with 2 routes each on one mosquitto; its
    tables (decoded from the broker alone) list every node and every route
    device online with its route's name and LIVE status, then the killed
    node and its devices offline after the broker's NDEATH."""
    from conftest import ROOT, castpoint_bin
    r = subprocess.run([sys.executable, str(ROOT / "simulators" / "fleet.py"), "--nodes", "2",
                        "--routes", "2", "--seconds", "2", "--kill", "1",
                        "--bin", castpoint_bin()],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = r.stdout.split("## After SIGKILL", 1)

    def rows(text):
        return [[c.strip() for c in line.strip("|").split("|")]
                for line in text.splitlines() if line.startswith("| router-")]
    nodes = [x for x in rows(before) if len(x) == 11]
    devices = [x for x in rows(before) if len(x) == 10]
    assert sorted((x[0], x[1]) for x in nodes) == [("router-01", "ONLINE"),
                                                    ("router-02", "ONLINE")], r.stdout
    assert sorted((x[0], x[1], x[2], x[3]) for x in devices) == [
        ("router-01", "route-1", "router-01-cam1", "ONLINE"),
        ("router-01", "route-2", "router-01-cam2", "ONLINE"),
        ("router-02", "route-1", "router-02-cam1", "ONLINE"),
        ("router-02", "route-2", "router-02-cam2", "ONLINE")], r.stdout
    assert all(x[5] in ("LIVE", "null") for x in devices), r.stdout
    after_nodes = {x[0]: x[1] for x in rows(after) if len(x) == 11}
    after_devs = {(x[0], x[1]): x[3] for x in rows(after) if len(x) == 10}
    assert after_nodes == {"router-01": "OFFLINE", "router-02": "ONLINE"}, r.stdout
    assert after_devs == {("router-01", "route-1"): "OFFLINE",
                          ("router-01", "route-2"): "OFFLINE",
                          ("router-02", "route-1"): "ONLINE",
                          ("router-02", "route-2"): "ONLINE"}, r.stdout
