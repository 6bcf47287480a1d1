"""Modbus TCP interop: the real castpoint binary polled and commanded by pymodbus (Python client) and mbpoll (Debian), cross-checked against the HTTP API."""
import json
import pathlib
import re
import socket
import struct
import subprocess
import tempfile
import urllib.request

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from conftest import ROOT, Server

QUALITY = {"ok": 0, "stale": 1, "fault": 2, "unavailable": 3, "overridden": 4}
MEASUREMENTS = ["active_streams", "connected_viewers", "total_bitrate_out", "cpu_usage",
                "memory_usage", "gpu_usage", "network_throughput", "encoding_latency",
                "dropped_frames", "uptime"]
SCALES = [1, 1, 100, 10, 10, 10, 100, 1, 1, 1]
STATUSES = ["server_status", "stream_status", "input_status", "encoder_status",
            "cdn_status", "gpu_status", "communication_status"]
# Point-list order: the quality block 30201.. and the discrete inputs 10001..
ALL_POINTS = MEASUREMENTS + ["stream_enable", "input_select", "output_profile",
                             "recording_enable", "transcode_enable", "system_restart"] + STATUSES


def http_get(server, path):
    with urllib.request.urlopen(server.http_base + path, timeout=5) as r:
        return json.load(r)


def point(server, pid):
    return http_get(server, f"/api/points/{pid}")


@pytest.fixture
def client(server):
    host, port = server.addrs["modbus"]
    c = ModbusTcpClient(host, port=port, timeout=3)
    assert c.connect()
    yield c
    c.close()


def ok(resp):
    assert not resp.isError(), resp
    return resp


def exception_code(resp):
    assert resp.isError(), resp
    assert isinstance(resp, ExceptionResponse), resp
    return resp.exception_code


def mbpoll(server, *args, check=True):
    """Runs mbpoll once against castpoint; returns {reference: text value}."""
    host, port = server.addrs["modbus"]
    p = subprocess.run(["mbpoll", "-m", "tcp", "-p", str(port), "-1", "-o", "2", *args[:-1], host,
                        *([] if args[-1] is None else [str(args[-1])])],
                       capture_output=True, text=True, timeout=20)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    vals = {int(m.group(1)): m.group(2)
            for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", p.stdout, re.M)}
    return p, vals


def test_pymodbus_reads_match_http(server, client):
    # Statuses: 40001-40007, enum ordinals, 1 = first state.
    regs = ok(client.read_holding_registers(0, count=7)).registers
    for pid, reg in zip(STATUSES, regs):
        p = point(server, pid)
        if p["value"] is None and p["states"][-1] == "N/A":
            # Unavailable: the N/A state (the last one), never a real state.
            assert p["state"] == "N/A", p
            expect = len(p["states"])
        else:
            # A point without an N/A state reads 0 while unavailable.
            expect = 0 if p["value"] is None else p["value"]
        assert reg == expect, (pid, reg, p)
    # No transcoder and no RTMP output here: Encoder Status and CDN Status
    # read N/A (4 and 3), not OK / CONNECTED.
    assert regs[3] == 4 and point(server, "encoder_status")["state"] == "N/A"
    assert regs[4] == 3 and point(server, "cdn_status")["state"] == "N/A"
    # Quality codes 30201.. and quality-ok bits 10001.. for every point.
    q = ok(client.read_input_registers(200, count=23)).registers
    bits = ok(client.read_discrete_inputs(0, count=23)).bits[:23]
    for pid, code, bit in zip(ALL_POINTS, q, bits):
        status = point(server, pid)["status"]
        assert code == QUALITY[status], (pid, code, status)
        assert bit == (status == "ok"), (pid, bit, status)
    # Measurements: the 16-bit scaled block agrees with the f32 block; a
    # missing value reads 0 / NaN and its quality register says unavailable.
    r16 = ok(client.read_input_registers(0, count=10)).registers
    r32 = ok(client.read_input_registers(100, count=20)).registers
    for i, pid in enumerate(MEASUREMENTS):
        f = struct.unpack(">f", struct.pack(">HH", r32[2 * i], r32[2 * i + 1]))[0]
        if q[i] == QUALITY["unavailable"]:
            assert r16[i] == 0 and f != f, (pid, r16[i], f)
        else:
            assert r16[i] == min(65535, round(f * SCALES[i])), (pid, r16[i], f)


def test_pymodbus_coil_write_flips_stream_enable_visible_over_http(server, client):
    assert point(server, "stream_enable")["value"] is True
    ok(client.write_coil(0, False))
    p = point(server, "stream_enable")
    assert p["value"] is False and p["level"] == 10, p
    assert ok(client.read_coils(0, count=1)).bits[0] is False
    ok(client.write_coils(0, [True, True, False, False]))
    assert ok(client.read_coils(0, count=4)).bits[:4] == [True, True, False, False]
    assert point(server, "stream_enable")["value"] is True
    assert point(server, "recording_enable")["value"] is True
    # The quality-ok bit of stream_enable (10011) is set: level 10 is not an override.
    assert ok(client.read_discrete_inputs(10, count=1)).bits[0] is True


def test_pymodbus_holding_writes_fc06_fc16_fc23(server, client):
    ok(client.write_register(100, 5))
    assert point(server, "input_select")["value"] == 5
    ok(client.write_registers(100, [3, 7]))
    assert ok(client.read_holding_registers(100, count=2)).registers == [3, 7]
    assert point(server, "output_profile")["value"] == 7
    r = ok(client.readwrite_registers(read_address=100, read_count=2,
                                      write_address=101, values=[9]))
    assert r.registers == [3, 9]


def test_pymodbus_exceptions(server, client):
    # 02: unmapped address inside the range; write to a read-only status.
    assert exception_code(client.read_input_registers(8, count=4)) == 2
    assert exception_code(client.read_holding_registers(6, count=2)) == 2
    assert exception_code(client.read_coils(3, count=2)) == 2
    assert exception_code(client.write_register(0, 1)) == 2
    assert exception_code(client.write_registers(0, [1, 1])) == 2
    assert exception_code(client.write_coil(9, True)) == 2
    # 03: set-point out of range; a refused FC16 changes nothing.
    assert exception_code(client.write_register(100, 17)) == 3
    assert exception_code(client.write_registers(100, [4, 65])) == 3
    assert ok(client.read_holding_registers(100, count=2)).registers == [0, 0]
    # 0x0B: a unit id castpoint does not serve.
    assert exception_code(client.read_input_registers(0, count=1, device_id=7)) == 0x0B
    # Units 0 and 255 are served by default.
    for unit in (0, 255):
        ok(client.read_input_registers(0, count=1, device_id=unit))


def test_pymodbus_device_information(server, client):
    info = ok(client.read_device_information(read_code=1)).information
    assert info[0] == b"castpoint"
    assert info[1] == b"castpoint-gw"
    assert info[2].decode() == http_get(server, "/health")["version"]
    regular = ok(client.read_device_information(read_code=2)).information
    assert set(regular) == {0, 1, 2, 4, 5}


def raw_call(server, adu):
    """Sends raw bytes; returns the answer bytes (b'' if the server closed)."""
    host, port = server.addrs["modbus"]
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(adu)
        try:
            return s.recv(300)
        except ConnectionResetError:
            return b""


def test_raw_frames_pymodbus_cannot_send(server, client):
    # Coil value other than FF00/0000: exception 03 on the same connection.
    assert raw_call(server, bytes([0, 1, 0, 0, 0, 6, 1, 5, 0, 0, 0x12, 0x34])) == \
        bytes([0, 1, 0, 0, 0, 3, 1, 0x85, 3])
    # FC15 quantity > 8 x byte count (tokio-modbus's codec panics here): 03.
    assert raw_call(server, bytes([0, 2, 0, 0, 0, 8, 1, 0x0F, 0, 0, 0, 100, 1, 0xFF])) == \
        bytes([0, 2, 0, 0, 0, 3, 1, 0x8F, 3])
    # Quantities beyond the spec (pymodbus refuses to send them): 03.
    assert raw_call(server, bytes([0, 6, 0, 0, 0, 6, 1, 3, 0, 0, 0, 126])) == \
        bytes([0, 6, 0, 0, 0, 3, 1, 0x83, 3])
    assert raw_call(server, bytes([0, 7, 0, 0, 0, 6, 1, 1, 0, 0, 0x07, 0xD1])) == \
        bytes([0, 7, 0, 0, 0, 3, 1, 0x81, 3])
    # Malformed MBAP (protocol id 1, length 0, length 300): connection closed.
    for adu in (bytes([0, 3, 0, 1, 0, 6, 1, 4, 0, 0, 0, 1]),
                bytes([0, 4, 0, 0, 0, 0, 1]),
                bytes([0, 5, 0, 0, 1, 44, 1, 4])):
        assert raw_call(server, adu) == b"", adu
    # The pymodbus client connected all along is still served.
    ok(client.read_input_registers(0, count=3))


def test_mbpoll_reads_seed_addresses(server, client):
    # 30001-30003 as input registers (-t 3), references 1-based like the seed.
    _, vals = mbpoll(server, "-a", "1", "-r", "1", "-c", "3", "-t", "3", None)
    expect = ok(client.read_input_registers(0, count=3)).registers
    assert [int(vals[i]) for i in (1, 2, 3)] == expect
    # 40001-40002 statuses (-t 4).
    _, vals = mbpoll(server, "-a", "1", "-r", "1", "-c", "2", "-t", "4", None)
    def ordinal(p):
        if p["value"] is None:
            return len(p["states"]) if p["states"][-1] == "N/A" else 0
        return p["value"]
    assert [int(vals[1]), int(vals[2])] == [ordinal(point(server, "server_status")),
                                             ordinal(point(server, "stream_status"))]
    # Coil 00001 (-t 0) and f32 30101.. big-endian words (-B, map default ABCD).
    _, vals = mbpoll(server, "-a", "1", "-r", "1", "-t", "0", None)
    assert vals[1] == "1"
    _, vals = mbpoll(server, "-a", "255", "-r", "101", "-c", "2", "-t", "3:float", "-B", None)
    assert set(vals) == {101, 103}


def test_mbpoll_writes_and_exceptions(server):
    mbpoll(server, "-a", "1", "-r", "1", "-t", "0", 0)
    assert point(server, "stream_enable")["value"] is False
    mbpoll(server, "-a", "1", "-r", "101", "-t", "4", 6)
    assert point(server, "input_select")["value"] == 6
    _, vals = mbpoll(server, "-a", "1", "-r", "101", "-c", "2", "-t", "4", None)
    assert (vals[101], vals[102]) == ("6", "0")
    p, _ = mbpoll(server, "-a", "1", "-r", "9", "-c", "4", "-t", "3", None, check=False)
    assert p.returncode != 0 and "Illegal data address" in p.stderr, p.stderr
    p, _ = mbpoll(server, "-a", "1", "-r", "1", "-t", "4", 1, check=False)
    assert p.returncode != 0 and "Illegal data address" in p.stderr, p.stderr
    p, _ = mbpoll(server, "-a", "1", "-r", "101", "-t", "4", 99, check=False)
    assert p.returncode != 0 and "Illegal data value" in p.stderr, p.stderr
    p, _ = mbpoll(server, "-a", "9", "-r", "1", "-t", "4", None, check=False)
    assert p.returncode != 0 and "Target device failed to respond" in p.stderr, p.stderr
    assert point(server, "input_select")["value"] == 6


WORD_ORDER_MAP = """
[[register]]
point = "input_select"
table = "holding"
address = 40201
type = "f32"
word_order = "ABCD"

[[register]]
point = "input_select"
table = "holding"
address = 40203
type = "f32"
word_order = "CDAB"

[[register]]
point = "input_select"
table = "holding"
address = 40205
type = "f32"
word_order = "BADC"

[[register]]
point = "input_select"
table = "holding"
address = 40207
type = "f32"
word_order = "DCBA"

[[register]]
point = "output_profile"
table = "holding"
address = 40209
type = "i32"
word_order = "CDAB"
"""


def orders(value):
    """The four word orders of a big-endian f32, as register pairs."""
    a, b, c, d = struct.pack(">f", value)
    w = lambda x, y: (x << 8) | y  # noqa: E731
    return {"ABCD": [w(a, b), w(c, d)], "CDAB": [w(c, d), w(a, b)],
            "BADC": [w(b, a), w(d, c)], "DCBA": [w(d, c), w(b, a)]}


@pytest.fixture
def word_order_server():
    d = pathlib.Path(tempfile.mkdtemp(prefix="castpoint-mb-wo-"))
    (d / "modbus.toml").write_text((ROOT / "mappings" / "modbus.toml").read_text() + WORD_ORDER_MAP)
    (d / "castpoint.toml").write_text('[mappings]\nmodbus = "modbus.toml"\n')
    s = Server(config=d / "castpoint.toml")
    yield s
    s.stop()


def test_float_word_orders_with_pymodbus_and_mbpoll(word_order_server):
    server = word_order_server
    host, port = server.addrs["modbus"]
    c = ModbusTcpClient(host, port=port, timeout=3)
    assert c.connect()
    try:
        # Write 12.0 through the CDAB view with pymodbus's own converter.
        regs = c.convert_to_registers(12.0, c.DATATYPE.FLOAT32, word_order="little")
        ok(c.write_registers(202, regs))
        assert point(server, "input_select")["value"] == 12
        got = ok(c.read_holding_registers(200, count=8)).registers
        exp = orders(12.0)
        assert got == exp["ABCD"] + exp["CDAB"] + exp["BADC"] + exp["DCBA"]
        assert c.convert_from_registers(got[0:2], c.DATATYPE.FLOAT32, word_order="big") == 12.0
        assert c.convert_from_registers(got[2:4], c.DATATYPE.FLOAT32, word_order="little") == 12.0
        # DCBA write, i32 CDAB write.
        ok(c.write_registers(206, orders(3.0)["DCBA"]))
        assert point(server, "input_select")["value"] == 3
        ok(c.write_registers(208, c.convert_to_registers(40, c.DATATYPE.INT32, word_order="little")))
        assert point(server, "output_profile")["value"] == 40
        # Half of a 32-bit value: 03.
        assert exception_code(c.write_register(200, 0)) == 3
        assert exception_code(c.write_registers(201, [0, 0])) == 3
    finally:
        c.close()
    # mbpoll reads floats little-endian-word (CDAB) by default and ABCD with -B.
    _, vals = mbpoll(server, "-a", "1", "-r", "201", "-c", "1", "-t", "4:float", "-B", None)
    assert float(vals[201]) == 3.0
    _, vals = mbpoll(server, "-a", "1", "-r", "203", "-c", "1", "-t", "4:float", None)
    assert float(vals[203]) == 3.0
    _, vals = mbpoll(server, "-a", "1", "-r", "209", "-c", "1", "-t", "4:int", None)
    assert int(vals[209]) == 40


@pytest.fixture
def write_allow_server():
    d = pathlib.Path(tempfile.mkdtemp(prefix="castpoint-mb-allow-"))
    (d / "castpoint.toml").write_text(
        '[telemetry]\nenabled = false\n[modbus]\nwrite_allow = ["127.0.0.2/32"]\n')
    s = Server(config=d / "castpoint.toml")
    yield s
    s.stop()


def test_pymodbus_write_from_outside_write_allow_gets_exception_01(write_allow_server):
    server = write_allow_server
    host, port = server.addrs["modbus"]
    outsider = ModbusTcpClient(host, port=port, timeout=3)
    assert outsider.connect()
    try:
        # Writes refused with 01 (illegal function); reads still answered.
        assert exception_code(outsider.write_coil(0, False)) == 1
        assert exception_code(outsider.write_register(100, 3)) == 1
        assert ok(outsider.read_coils(0, count=1)).bits[0] is True
        local = outsider.socket.getsockname()
    finally:
        outsider.close()
    assert point(server, "stream_enable")["value"] is True
    audit = http_get(server, "/api/audit?target=stream_enable")["events"]
    assert any(e["protocol"] == "modbus" and e["peer"] == f"{local[0]}:{local[1]}"
               and e["result"] != "ok" for e in audit), audit
    # Linux routes all of 127/8 to lo: 127.0.0.2 is the allowed host.
    allowed = ModbusTcpClient(host, port=port, timeout=3, source_address=("127.0.0.2", 0))
    assert allowed.connect()
    try:
        ok(allowed.write_coil(0, False))
    finally:
        allowed.close()
    assert point(server, "stream_enable")["value"] is False


def test_check_config_names_a_bad_write_allow_entry(tmp_path):
    from conftest import castpoint_bin
    cfg = tmp_path / "castpoint.toml"
    cfg.write_text('[modbus]\nwrite_allow = ["10.0.0.0/33"]\n')
    p = subprocess.run([castpoint_bin(), "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "modbus.write_allow[0]: " in p.stderr, p.stderr
