"""Route point blocks (issue 20) with a real Modbus peer: pymodbus reads and commands route 3's block at the addresses `castpoint export modbus-map` lists, and a free slot answers exception 02."""
import csv
import io
import json
import subprocess
import tempfile
import time
import urllib.request

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
