#!/usr/bin/env python3
"""BACnet route objects at scale (issue 20): 100 routes x 4 outputs; start-up to `ready` and to every route's objects served, the whole Object_List read (segmented) by bacpypes3, ReadPropertyMultiple ALL of one route's 31 objects (p50/p99), RSS.

Usage: python3 bench/bacnet_routes.py [--routes 100] [--outputs 4] [--reads 300] [--logs] [--bin target/release/castpoint]
Prints Markdown. The RPM client is raw UDP (segmented answer accepted,
each segment acknowledged, window 1 as the server proposes), so the figures are the
server's; bacpypes3 reads the Object_List to check it whole.
"""
import argparse
import asyncio
import os
import pathlib
import socket
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "lib"))
import launch  # noqa: E402  (bench/lib is not a package)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE = 389001
STRIDE = 1000
BLOCK = 31  # objects per route with the shipped template, max_outputs 8
LOGS = 7  # Trend Logs per route: TL k = 3..9 log AI k ([trend_log] route_buffer_size > 0)


def config(routes, outputs):
    text = "[telemetry]\nenabled = true\n"
    for r in range(1, routes + 1):
        text += (f'[[route]]\nname = "r{r:03d}"\n'
                 '[[route.input]]\nname = "in"\ntype = "udp"\nbind = "127.0.0.1:0"\n')
        for o in range(1, outputs + 1):
            text += (f'[[route.output]]\nname = "o{o}"\ntype = "udp"\n'
                     f'dest = "127.0.0.1:9"\n')
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


def bvlc(npdu):
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


def rp_count(invoke):
    """ReadProperty Device Object_List[0]."""
    apdu = bytes([0x00, 0x05, invoke, 12, 0x0C]) + struct.pack(">I", (8 << 22) | DEVICE) + \
        bytes([0x19, 76, 0x29, 0x00])
    return bvlc(b"\x01\x04" + apdu)


def rpm_all(invoke, slot, logs=False):
    """RPM ALL of the 31 objects of route slot `slot` (segmented answer
    accepted), and of its 7 Trend Logs with `logs`."""
    d = bytearray([0x02, 0x75, invoke, 14])
    objs = [(TYPES[k], slot * STRIDE + k) for k in range(BLOCK)]
    if logs:
        objs += [(20, slot * STRIDE + k) for k in range(3, 3 + LOGS)]
    for ty, inst in objs:
        d += b"\x0c" + struct.pack(">I", (ty << 22) | inst) + b"\x1e\x09\x08\x1f"
    return bvlc(b"\x01\x04" + bytes(d))


# Object type of block point k (shipped template, docs/route-points.md).
TYPES = [19, 19, 19] + [0] * 7 + [4, 19, 4, 4, 2] + [4, 19] * 8


def segment_ack(invoke, seq):
    return bvlc(bytes([0x01, 0x00, 0x40, invoke, seq, 1]))


def call(s, port, frame):
    """One confirmed request; the answer's service data (segments joined)."""
    invoke = frame[8]
    s.sendto(frame, ("127.0.0.1", port))
    body = b""
    while True:
        try:
            a = s.recv(2048)[6:]
        except TimeoutError:
            raise RuntimeError(f"no answer to invoke {invoke} after {len(body)} octets")
        if a[1] != invoke:
            continue
        if a[0] >> 4 != 3:
            raise RuntimeError(f"not a complex ack: {a[:8].hex()}")
        if a[0] & 0x08:
            body += a[5:]
            s.sendto(segment_ack(invoke, a[2]), ("127.0.0.1", port))
            if not a[0] & 0x04:
                return body
        else:
            return a[3:]


def object_count(s, port):
    b = call(s, port, rp_count(1))
    i = b.index(0x3E) + 1
    n = b[i] & 0x07
    return int.from_bytes(b[i + 1:i + 1 + n], "big")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def rss_kb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def bacpypes3_object_list(port):
    from bacpypes3.app import Application
    from bacpypes3.argparse import SimpleArgumentParser
    from bacpypes3.pdu import Address
    from bacpypes3.primitivedata import ObjectIdentifier
    app = Application.from_args(SimpleArgumentParser().parse_args(
        ["--address", "127.0.0.1/8:0", "--instance", "991"]))
    # 100 routes with their Trend Logs make an Object_List of ~19.7 KB: more
    # than bacpypes3's default 16 segments of 1024 octets (the device then
    # aborts with BUFFER_OVERFLOW, as it must). A front-end reading a device
    # this size accepts more segments, or reads the list by index.
    app.device_object.maxSegmentsAccepted = 64
    try:
        t0 = time.perf_counter()
        ol = await app.read_property(Address(f"127.0.0.1:{port}"),
                                     ObjectIdentifier(f"device,{DEVICE}"), "object-list")
        return ol, time.perf_counter() - t0
    finally:
        app.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--outputs", type=int, default=4)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--logs", action="store_true",
                    help="the RPM ALL also reads the route's 7 Trend Logs")
    rel = ROOT / "target" / "release" / "castpoint"
    ap.add_argument("--bin", default=str(rel if rel.exists() else ROOT / "target" / "debug" / "castpoint"))
    a = ap.parse_args()
    cfg = config(a.routes, a.outputs)
    data = tempfile.mkdtemp(prefix="castpoint-bench-routes-")
    t0 = time.perf_counter()
    p, addrs, ready = launch.start(a.bin, cfg, data)
    port = launch.port(addrs, "bacnet")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5.0)
    # Server objects incl. 3 Notification Classes, then per route its view,
    # objects and Trend Logs.
    want = 39 + a.routes * (BLOCK + 1 + LOGS)
    try:
        while object_count(s, port) != want:
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("route objects not all served in 60 s")
            time.sleep(0.01)
        served = time.perf_counter() - t0
        ol, ol_t = asyncio.run(bacpypes3_object_list(port))
        assert len(ol) == want, (len(ol), want)
        size = sum(1 for o in ol if str(o[0]) == "structured-view")
        # The stack remembers a finished segmented transaction by peer and
        # invoke id for a while (a repeat is a retransmission to it): every
        # request gets a fresh (socket, invoke id) pair.
        socks = []

        def sock_for(i):
            if i % 250 == 0:
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                socks[-1].settimeout(5.0)
            return socks[-1], 2 + i % 250
        for i in range(20):  # warm-up
            c, inv = sock_for(i)
            call(c, port, rpm_all(inv, 1, a.logs))
        lat, octets = [], 0
        for i in range(20, 20 + a.reads):
            slot = 1 + i % a.routes
            c, inv = sock_for(i)
            t = time.perf_counter()
            body = call(c, port, rpm_all(inv, slot, a.logs))
            lat.append(time.perf_counter() - t)
            octets = len(body)
        rss = rss_kb(p.pid)
    finally:
        p.terminate()
        p.wait()
    # The profiling profile is the release code with line tables.
    kind = "release" if ("release" in a.bin or "profiling" in a.bin) else "debug"
    print(f"{a.routes} routes x {a.outputs} outputs, {kind} binary, loopback, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| start-up to `ready` | {ready:.2f} s |")
    print(f"| start-up to every route object served (Object_List = {want}) | {served:.2f} s |")
    print(f"| Object_List read whole by bacpypes3 (segmented, {len(ol)} ids, {size} Structured Views) | {ol_t * 1e3:.0f} ms |")
    what = f"{BLOCK} objects and {LOGS} Trend Logs" if a.logs else f"{BLOCK} objects"
    print(f"| RPM ALL of one route's {what} ({octets} octets, segmented), p50 | {statistics.median(lat) * 1e3:.2f} ms |")
    print(f"| same, p99 ({a.reads} reads, routes in turn) | {pct(lat, 0.99) * 1e3:.2f} ms |")
    print(f"| RSS | {rss / 1024:.0f} MB |")


if __name__ == "__main__":
    main()
