#!/usr/bin/env python3
"""BACnet benchmark: ReadPropertyMultiple of every object's present-value, castpoint vs a bacpypes3 server with the same objects, measured in the same run; then ReadRange of 1,000 Trend Log records.

Usage: python3 bench/bacnet.py [--seconds 5] [--window 1,8] [--trend-reads 50] [--bin target/release/castpoint]
Prints Markdown tables. The client is a small raw-UDP asyncio client (the
same bytes to both servers), so the numbers compare servers, not clients.

The Trend Log part has no server peer: bacpypes3 0.0.110 cannot serve
ReadRange (its do_ReadRangeRequest is commented out in
bacpypes3/service/object.py), so it is measured as castpoint alone, with the
raw client (segmented answer, one segment acknowledged at a time) and with
bacpypes3 as the client (its own decode included) for reference.
"""
import argparse
import asyncio
import multiprocessing
import os
import pathlib
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (type number, instance) of castpoint's map (mappings/bacnet.toml).
OBJECTS = [(0, i) for i in range(10)] + [(4, i) for i in range(4)] + \
          [(2, 0), (2, 1)] + [(19, i) for i in range(7)]


def rpm_request(invoke):
    d = bytearray([0x01, 0x04, 0x00, 0x05, invoke, 14])
    for ty, inst in OBJECTS:
        d += b"\x0c" + struct.pack(">I", (ty << 22) | inst) + b"\x1e\x09\x55\x1f"
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(d) + 4) + bytes(d)


class Proto(asyncio.DatagramProtocol):
    def __init__(self):
        self.waiters = {}

    def datagram_received(self, data, addr):
        # BVLC(4) NPDU(2) APDU: complex ack 0x30, invoke id
        if len(data) > 7 and data[6] >> 4 == 3:
            fut = self.waiters.pop(data[7], None)
            if fut and not fut.done():
                fut.set_result(len(data))


async def run_client(port, seconds, window):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
    reqs = [rpm_request(i) for i in range(256)]
    lat = []
    errors = 0
    deadline = time.perf_counter() + seconds
    next_id = 0

    async def worker(slot):
        nonlocal errors, next_id
        while time.perf_counter() < deadline:
            inv = next_id % 256
            next_id += 1
            fut = loop.create_future()
            proto.waiters[inv] = fut
            t0 = time.perf_counter()
            transport.sendto(reqs[inv], ("127.0.0.1", port))
            try:
                n = await asyncio.wait_for(fut, 2.0)
                if n < 100:
                    errors += 1
                lat.append(time.perf_counter() - t0)
            except asyncio.TimeoutError:
                errors += 1
                proto.waiters.pop(inv, None)

    t_start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(window)))
    elapsed = time.perf_counter() - t_start
    transport.close()
    return lat, errors, elapsed


def bacpypes3_server(port_file):
    """A bacpypes3 device with the same object types and instances."""
    from bacpypes3.app import Application
    from bacpypes3.argparse import SimpleArgumentParser
    from bacpypes3.local.analog import AnalogInputObject
    from bacpypes3.local.analog import AnalogValueObjectCmd as CommandableAV
    from bacpypes3.local.binary import BinaryOutputObject as CommandableBO
    from bacpypes3.local.multistate import MultiStateValueObject

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        args = SimpleArgumentParser().parse_args(
            ["--address", f"127.0.0.1/8:{port}", "--instance", "389002", "--name", "bacpypes3"])
        app = Application.from_args(args)
        for ty, inst in OBJECTS:
            name = f"o-{ty}-{inst}"
            if ty == 0:
                o = AnalogInputObject(objectIdentifier=("analog-input", inst), objectName=name,
                                      presentValue=1.5, statusFlags=[0, 0, 0, 0], eventState="normal",
                                      outOfService=False, units="percent")
            elif ty == 2:
                o = CommandableAV(objectIdentifier=("analog-value", inst), objectName=name,
                                  presentValue=0.0, statusFlags=[0, 0, 0, 0], eventState="normal",
                                  outOfService=False, units="noUnits", relinquishDefault=0.0)
            elif ty == 4:
                o = CommandableBO(objectIdentifier=("binary-output", inst), objectName=name,
                                  presentValue="inactive", statusFlags=[0, 0, 0, 0], eventState="normal",
                                  outOfService=False, polarity="normal", relinquishDefault="inactive")
            else:
                o = MultiStateValueObject(objectIdentifier=("multi-state-value", inst), objectName=name,
                                          presentValue=1, statusFlags=[0, 0, 0, 0], eventState="normal",
                                          outOfService=False, numberOfStates=3)
            app.add_object(o)
        pathlib.Path(port_file).write_text(str(port))
        await asyncio.Future()

    asyncio.run(main())


def start_castpoint(binary, data=None):
    data = data or tempfile.mkdtemp(prefix="castpoint-bench-")
    p = subprocess.Popen([binary, "run", "--http", "127.0.0.1:0", "--bacnet", "127.0.0.1:0",
                          "--modbus", "127.0.0.1:0", "--rtmp", "127.0.0.1:0", "--data-dir", data],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    for line in p.stdout:
        parts = line.split()
        if parts[:2] == ["listening", "bacnet"]:
            port = int(parts[2].rsplit(":", 1)[1])
        if parts == ["ready"]:
            break
    return p, port


def start_bacpypes3():
    port_file = tempfile.mktemp(prefix="bp3-port-")
    proc = multiprocessing.Process(target=bacpypes3_server, args=(port_file,), daemon=True)
    proc.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(port_file) and pathlib.Path(port_file).read_text():
            return proc, int(pathlib.Path(port_file).read_text())
        time.sleep(0.1)
    raise RuntimeError("bacpypes3 server did not start")


TREND_RECORDS = 1000


def trend_data_dir(binary):
    """A data dir whose SQLite history holds TREND_RECORDS cpu_usage samples
    (10 s apart, ending now): castpoint restores them into Trend Log TL3."""
    import sqlite3
    data = tempfile.mkdtemp(prefix="castpoint-bench-trend-")
    p, _ = start_castpoint(binary, data)  # creates the schema
    p.terminate()
    p.wait()
    now = int(time.time() * 1000)
    rows = [("cpu_usage", now - (TREND_RECORDS - k) * 10_000, float(k % 100))
            for k in range(TREND_RECORDS)]
    db = sqlite3.connect(pathlib.Path(data) / "castpoint.db")
    db.executemany("INSERT INTO history (point, at, value) VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()
    return data


def read_range_request(invoke, index, count):
    # Confirmed request, segmented response accepted (SA), > 64 segments,
    # max APDU 1476; ReadRange TL3 Log_Buffer by position.
    apdu = bytes([0x02, 0x75, invoke, 26, 0x0C]) + struct.pack(">I", (20 << 22) | 3) + \
        bytes([0x19, 0x83, 0x3E, 0x22]) + struct.pack(">H", index) + b"\x32" + \
        struct.pack(">h", count) + b"\x3f"
    npdu = b"\x01\x04" + apdu
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


def segment_ack(invoke, seq):
    npdu = bytes([0x01, 0x00, 0x40, invoke, seq, 1])
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


def raw_page(s, port, index, count):
    """One ReadRange answer: (items, more-items flag, octets of service data)."""
    s.sendto(read_range_request(1, index, count), ("127.0.0.1", port))
    body = b""
    while True:
        a = s.recv(2048)[6:]
        if a[0] >> 4 != 3:
            raise RuntimeError(f"not an ack: {a[:8].hex()}")
        if a[0] & 0x08:  # segment: invoke, sequence, window, service
            body += a[5:]
            s.sendto(segment_ack(1, a[2]), ("127.0.0.1", port))
            if not a[0] & 0x04:
                break
        else:
            body = a[3:]
            break
    # object id (5), property (2), result flags [3] (3), item count [4]
    more = bool(body[9] & 0x20)
    n_len = body[10] & 0x07
    items = int.from_bytes(body[11:11 + n_len], "big")
    return items, more, len(body)


def raw_read_range(port, count):
    """All `count` records from position 1, page after page; returns
    (seconds, records, pages, octets)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    t0 = time.perf_counter()
    got, pages, octets = 0, 0, 0
    while got < count:
        n, more, b = raw_page(s, port, got + 1, count - got)
        got, pages, octets = got + n, pages + 1, octets + b
        if not more:
            break
    el = time.perf_counter() - t0
    s.close()
    return el, got, pages, octets


async def bacpypes3_read_range(port, reads):
    from bacpypes3.app import Application
    from bacpypes3.argparse import SimpleArgumentParser
    from bacpypes3.pdu import Address
    from bacpypes3.primitivedata import ObjectIdentifier
    app = Application.from_args(SimpleArgumentParser().parse_args(
        ["--address", "127.0.0.1/8:0", "--instance", "990"]))
    addr = Address(f"127.0.0.1:{port}")
    lat, n = [], 0
    try:
        for _ in range(reads):
            t0 = time.perf_counter()
            n = 0
            while n < TREND_RECORDS:
                recs = await app.read_range(addr, ObjectIdentifier("trend-log,3"), "log-buffer",
                                            range_params=("p", n + 1, None, None, TREND_RECORDS - n))
                if not recs:
                    break
                n += len(recs)
            lat.append(time.perf_counter() - t0)
    finally:
        app.close()
    return lat, n


def trend_bench(binary, reads):
    data = trend_data_dir(binary)
    cp, port = start_castpoint(binary, data)
    rows = []
    try:
        for _ in range(3):  # warm-up
            raw_read_range(port, TREND_RECORDS)
        res = [raw_read_range(port, TREND_RECORDS) for _ in range(reads)]
        lat = [r[0] for r in res]
        rows.append(("raw UDP client (1476-octet segments, window 1)", res[0][1], res[0][2],
                     res[0][3], statistics.median(lat) * 1e3, pct(lat, 0.99) * 1e3))
        lat, n = asyncio.run(bacpypes3_read_range(port, reads))
        rows.append(("bacpypes3 0.0.110 client (its defaults)", n, None, None,
                     statistics.median(lat) * 1e3, pct(lat, 0.99) * 1e3))
    finally:
        cp.terminate()
        cp.wait()
    print(f"\nReadRange by position of {TREND_RECORDS} Trend Log records (TL3, restored from "
          f"history), castpoint server, {reads} reads each, loopback\n")
    print("| client | records | answers | octets | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    dash = lambda v: "-" if v is None else v
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {dash(r[2])} | {dash(r[3])} | {r[4]:.2f} | {r[5]:.2f} |")
    print("\nbacpypes3 0.0.110 cannot serve ReadRange (no server-side peer to compare).")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--window", default="1,8")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "castpoint"))
    ap.add_argument("--trend-reads", type=int, default=50,
                    help="ReadRange reads of 1,000 Trend Log records (0: skip)")
    ap.add_argument("--trend-only", action="store_true")
    a = ap.parse_args()
    if a.trend_only:
        return trend_bench(a.bin, a.trend_reads)
    cp, cp_port = start_castpoint(a.bin)
    bp = None
    rows = []
    try:
        bp, bp_port = start_bacpypes3()
        for w in [int(x) for x in a.window.split(",")]:
            for name, port in (("castpoint", cp_port), ("bacpypes3 0.0.110", bp_port)):
                asyncio.run(run_client(port, 0.5, w))  # warm-up
                lat, errors, el = asyncio.run(run_client(port, a.seconds, w))
                rows.append((name, w, len(lat) / el, statistics.median(lat) * 1e3,
                             pct(lat, 0.99) * 1e3, errors))
    finally:
        cp.terminate()
        cp.wait()
        if bp is not None:
            bp.terminate()
    print(f"RPM of present-value of {len(OBJECTS)} objects per request, {a.seconds:g} s per cell, "
          f"loopback, {os.cpu_count()} CPUs\n")
    print("| server | outstanding | req/s | p50 ms | p99 ms | errors/timeouts |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]} |")
    by = {(r[0].split()[0], r[1]): r for r in rows}
    for w in sorted({r[1] for r in rows}):
        c, b = by[("castpoint", w)], by[("bacpypes3", w)]
        print(f"\nwindow {w}: castpoint/bacpypes3 throughput x{c[2] / max(b[2], 1e-9):.1f}, "
              f"p99 x{b[4] / max(c[4], 1e-9):.1f} lower")
    if a.trend_reads > 0:
        trend_bench(a.bin, a.trend_reads)


if __name__ == "__main__":
    sys.exit(main())
