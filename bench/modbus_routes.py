#!/usr/bin/env python3
"""Modbus route blocks at scale: FC04 reads of one route's whole input-register block (45 registers with the shipped template) by 1 and 8 concurrent clients, routes in turn, against castpoint with 100 routes x 4 outputs (issue 20's target: p99 < 1 ms at 8 clients).

Usage: python3 bench/modbus_routes.py [--routes 100] [--outputs 4] [--seconds 5] [--bin target/release/castpoint]

Each client is its own process (no shared interpreter lock) with one TCP
connection, closed loop: one request, wait for the whole answer, next. The
latency is the client's wall time per request; the client's own cost is in
it, so the figure is an upper bound for the server. Block layout:
docs/route-points.md (input registers of slot s from 1000 + s x 100).
"""
import argparse
import multiprocessing
import os
import pathlib
import socket
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bacnet_routes import config  # noqa: E402  (the same 100-route config)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "lib"))
import launch  # noqa: E402  (bench/lib is not a package)

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE, STRIDE, COUNT = 1000, 100, 45


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed")
        b += c
    return b


def client(port, routes, seconds, k, out):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat, tid, errors = [], 0, 0
    end = time.perf_counter() + seconds
    slot = 1 + k % routes
    while time.perf_counter() < end:
        tid = (tid + 1) & 0xFFFF
        req = struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, BASE + slot * STRIDE, COUNT)
        t0 = time.perf_counter()
        s.sendall(req)
        head = recv_exact(s, 7)
        body = recv_exact(s, struct.unpack(">H", head[4:6])[0] - 1)
        lat.append(time.perf_counter() - t0)
        if body[0] != 4 or body[1] != 2 * COUNT:
            errors += 1
        slot = 1 + slot % routes
    s.close()
    out.put((lat, errors))


def run(port, routes, seconds, n):
    q = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=client, args=(port, routes, seconds, k, q)) for k in range(n)]
    for p in ps:
        p.start()
    got = [q.get() for _ in ps]
    for p in ps:
        p.join()
    lat = sorted(x for g, _ in got for x in g)
    errors = sum(e for _, e in got)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return len(lat) / seconds, statistics.median(lat), p99, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--outputs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    rel = ROOT / "target" / "release" / "castpoint"
    ap.add_argument("--bin", default=str(rel if rel.exists() else ROOT / "target" / "debug" / "castpoint"))
    a = ap.parse_args()
    cfg = config(a.routes, a.outputs)
    data = tempfile.mkdtemp(prefix="castpoint-bench-mbroutes-")
    p, addrs, _ = launch.start(a.bin, cfg, data)
    port = launch.port(addrs, "modbus")
    try:
        # Every block open: the last slot answers (not exception 02).
        end = time.perf_counter() + 60
        while True:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, BASE + a.routes * STRIDE, COUNT))
                head = recv_exact(s, 7)
                body = recv_exact(s, struct.unpack(">H", head[4:6])[0] - 1)
            if body[0] == 4:
                break
            if time.perf_counter() > end:
                raise RuntimeError("route blocks not all open in 60 s")
            time.sleep(0.05)
        kind = "release" if ("release" in a.bin or "profiling" in a.bin) else "debug"
        load = os.getloadavg()[0]
        print(f"{a.routes} routes x {a.outputs} outputs, {kind} binary, loopback, "
              f"{os.cpu_count()} CPUs, load average {load:.1f}\n")
        print("| clients | reads/s | p50 | p99 | errors |\n|---:|---:|---:|---:|---:|")
        for n in (1, 8):
            rate, p50, p99, errors = run(port, a.routes, a.seconds, n)
            print(f"| {n} | {rate:,.0f} | {p50 * 1e3:.3f} ms | {p99 * 1e3:.3f} ms | {errors} |")
    finally:
        p.terminate()
        p.wait(timeout=10)


if __name__ == "__main__":
    main()
