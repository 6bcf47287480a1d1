"""/metrics as Prometheus sees it: parsed by prometheus_client's own parser, per route/input/output/SRT connection and process series present with conventional names, and every query of docs/grafana-dashboard.json naming a series the server exports."""
import json
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Server


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def scrape(base):
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return text, fams


@pytest.fixture(scope="module")
def srt_server():
    """A route with the generator in and an SRT listener out, and a real SRT
    caller (srt-live-transmit) on it, so per-connection series exist."""
    srt = free_port()
    udp = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'''
[[route]]
name = "cam1"
[[route.input]]
name = "gen"
type = "generator"
bitrate = 2000000
[[route.output]]
name = "srt-out"
type = "srt"
mode = "listener"
addr = "127.0.0.1:{srt}"
[[route.output]]
name = "lan"
type = "udp"
dest = "127.0.0.1:{udp}"
''')
    cfg.close()
    s = Server(config=cfg.name)
    caller = subprocess.Popen(["srt-live-transmit", "-q", f"srt://127.0.0.1:{srt}?mode=caller",
                               "file://con"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        yield s
    finally:
        caller.kill()
        caller.wait()
        s.stop()


def wait_for(base, name, timeout=20):
    deadline = time.time() + timeout
    while True:
        _, fams = scrape(base)
        f = fams.get(name)
        if f is not None and f.samples:
            return fams
        assert time.time() < deadline, f"{name} never appeared"
        time.sleep(0.3)


def sample(fams, family, **labels):
    # prometheus_client names a counter's family without `_total`.
    fam = fams[family[:-len("_total")] if family.endswith("_total") else family]
    for smp in fam.samples:
        if all(smp.labels.get(k) == v for k, v in labels.items()):
            return smp
    raise AssertionError(f"no {family} with {labels}: {fams[family].samples}")


def test_router_and_process_series(srt_server):
    fams = wait_for(srt_server.http_base, "castpoint_srt_rtt_seconds")
    # prometheus_client strips _total from counter family names.
    assert fams["castpoint_output_sent_bytes"].type == "counter"
    assert fams["castpoint_output_bitrate_bits_per_second"].type == "gauge"
    assert sample(fams, "castpoint_route_enabled", route="cam1").value == 1
    assert sample(fams, "castpoint_route_active_input", route="cam1", input="gen").value == 1
    # The generator produces: its input reads up (it read 0 before).
    assert sample(fams, "castpoint_input_up", route="cam1", input="gen").value == 1
    # The SRT caller receives, per connection.
    rtt = sample(fams, "castpoint_srt_rtt_seconds", route="cam1", output="srt-out")
    assert rtt.labels["peer"].startswith("127.0.0.1:"), rtt
    assert 0 <= rtt.value < 1
    deadline = time.time() + 20
    while sample(fams, "castpoint_output_sent_bytes_total", route="cam1",
                 output="srt-out").value == 0:
        assert time.time() < deadline, "SRT output sent nothing"
        time.sleep(0.3)
        _, fams = scrape(srt_server.http_base)
    for f in ["process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
              "process_max_fds", "process_threads", "process_start_time_seconds"]:
        assert f in fams, f
    assert sample(fams, "process_resident_memory_bytes").value > 1e6
    assert sample(fams, "process_open_fds").value > 5
    assert "castpoint_build_info" in fams


def test_names_follow_prometheus_conventions(srt_server):
    text, fams = scrape(srt_server.http_base)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        # Bit rates in bits per second, times in seconds, sizes in bytes.
        assert not re.search(r"(_ms|_mbps|_kb|_mb|_kbps)($|_)", name), name


# Functions and keywords of PromQL that look like names in an expression.
PROMQL = {"rate", "increase", "irate", "sum", "avg", "max", "min", "by", "without",
          "label_values", "count", "delta", "deriv", "offset", "and", "or", "unless"}


def dashboard_series():
    d = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = []
    panels = list(d["panels"])
    while panels:
        p = panels.pop()
        panels.extend(p.get("panels", []))
        exprs += [t["expr"] for t in p.get("targets", []) if "expr" in t]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q)
    names = set()
    for e in exprs:
        body = re.sub(r"\{[^}]*\}", "", e)        # label matchers
        body = re.sub(r"\[[^\]]*\]", "", body)     # range selectors
        body = re.sub(r'"[^"]*"', "", body)
        for tok in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", body):
            if tok not in PROMQL and not tok.startswith("$"):
                names.add(tok)
    return exprs, names


def test_every_dashboard_query_names_an_exported_series(srt_server):
    wait_for(srt_server.http_base, "castpoint_srt_rtt_seconds")
    text, _ = scrape(srt_server.http_base)
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    exprs, names = dashboard_series()
    assert len(exprs) > 20 and names, exprs
    # `route` is a label the template variable reads.
    names.discard("route")
    missing = sorted(n for n in names if n not in exported)
    assert not missing, f"dashboard queries name series /metrics lacks: {missing}"


def counter(fams, family, **labels):
    try:
        return sample(fams, family, **labels).value
    except (KeyError, AssertionError):
        return 0.0


def test_protocol_servers_count_requests_and_errors(srt_server):
    from pymodbus.client import ModbusTcpClient

    base = srt_server.http_base
    _, before = scrape(base)
    # REST: one answered, one refused (unknown point).
    urllib.request.urlopen(base + "/api/points", timeout=5).read()
    try:
        urllib.request.urlopen(base + "/api/points/no_such_point", timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 404
    # Modbus (pymodbus): one read answered, one far past the map (exception 02).
    host, port = srt_server.addrs["modbus"]
    c = ModbusTcpClient(host, port=port, timeout=3)
    assert c.connect()
    assert not c.read_holding_registers(0, count=1).isError()
    assert c.read_holding_registers(9000, count=1).isError()
    c.close()
    # BACnet: ReadProperty of the device's name (wildcard instance), then of
    # a missing object (Error).
    h, p = srt_server.addrs["bacnet"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    for invoke, oid in ((1, b"\x02\x3f\xff\xff"), (2, b"\x00\x80\x00\x63")):
        apdu = bytes([0x00, 0x05, invoke, 0x0C, 0x0C]) + oid + b"\x19\x4d"
        npdu = b"\x01\x04" + apdu
        s.sendto(bytes([0x81, 0x0A, 0, 4 + len(npdu)]) + npdu, (h, p))
        s.recvfrom(1500)
    s.close()
    _, after = scrape(base)
    d = lambda fam, **l: counter(after, fam, **l) - counter(before, fam, **l)
    assert d("castpoint_http_responses_total", surface="rest", **{"class": "2xx"}) >= 1
    assert d("castpoint_http_responses_total", surface="rest", **{"class": "4xx"}) >= 1
    assert d("castpoint_http_responses_total", surface="metrics", **{"class": "2xx"}) >= 1
    assert d("castpoint_modbus_requests_total") >= 2
    assert d("castpoint_modbus_exceptions_total") >= 1
    assert d("castpoint_bacnet_requests_total", type="confirmed") >= 2
    assert d("castpoint_bacnet_error_answers_total", type="error") >= 1
    assert "castpoint_bacnet_cov_subscriptions" in after
    assert "castpoint_haystack_watches" in after
