#!/usr/bin/env python3
"""BACnet benchmark: ReadPropertyMultiple of every object's present-value, castpoint vs a bacpypes3 server with the same objects, measured in the same run.

Usage: python3 bench/bacnet.py [--seconds 5] [--window 1,8] [--bin target/release/castpoint]
Prints a Markdown table. The client is a small raw-UDP asyncio client (the
same bytes to both servers), so the numbers compare servers, not clients.
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


def start_castpoint(binary):
    data = tempfile.mkdtemp(prefix="castpoint-bench-")
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


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--window", default="1,8")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "castpoint"))
    a = ap.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
