#!/usr/bin/env python3
"""BACnet on a quiet network (issue 25): castpoint's memory while its points change and no BACnet client sends anything, for one or more builds side by side.

Usage: python3 bench/bacnet_quiet.py [--writes 12000] [--routes 500] [--seconds 30]
                                     [BIN ...]   (default: target/release/castpoint)

Two loads, each on a fresh data directory, nothing on the BACnet port:
  writes  the embedded config; Input Select written over REST (priority 9,
          alternating values) `--writes` times, RSS after the first 2,000
          and at the end;
  routes  `--routes` idle routes (a UDP input nobody sends to, 2 UDP
          outputs, an HTTP-TS and an HLS output: their points still change
          now and then), RSS 10 s after `ready` and `--seconds` later.
Every point change is handed to the BACnet stack for its COV and event
evaluation; rusty-bacnet 0.15 joined the task each one leaves only when a
frame arrived, so on a quiet network each kept about 16 KB.
Nothing leaves 127.0.0.1.
"""
import argparse
import http.client
import json
import os
import pathlib
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "lib"))
import launch  # noqa: E402  (bench/lib is not a package)

BASE = ['[http]', 'bind = "127.0.0.1:0"', '[bacnet]', 'bind = "127.0.0.1:0"',
        '[modbus]', 'bind = "127.0.0.1:0"', '[rtmp]', 'enabled = false', '']


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start(binary, text):
    d = tempfile.mkdtemp(prefix="castpoint-bacnet-quiet-")
    cfg = os.path.join(d, "castpoint.toml")
    with open(cfg, "w") as f:
        f.write(text)
    p, addrs, _ = launch.start(binary, cfg, os.path.join(d, "data"))
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, addrs


def stop(p):
    p.terminate()
    p.wait(timeout=30)


def writes(binary, n):
    p, addrs = start(binary, "\n".join(BASE))
    try:
        h, port = addrs["http"].rsplit(":", 1)
        c = http.client.HTTPConnection(h, int(port), timeout=10)
        marks, t0 = {}, time.perf_counter()
        for i in range(1, n + 1):
            c.request("POST", "/api/points/input_select",
                      body=json.dumps({"value": 1 + i % 3, "priority": 9}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"write {i}: HTTP {r.status}")
            if i in (2000, n):
                marks[i] = rss_mib(p.pid)
        return marks[2000], marks[n], n / (time.perf_counter() - t0)
    finally:
        stop(p)


def routes(binary, n, seconds):
    c = list(BASE)
    for i in range(n):
        c += ['[[route]]', f'name = "r{i}"', '[[route.input]]', 'type = "udp"',
              'bind = "127.0.0.1:0"']
        for k in range(2):
            c += ['[[route.output]]', f'name = "u{k}"', 'type = "udp"', 'dest = "127.0.0.1:9"']
        c += ['[[route.output]]', 'name = "ts"', 'type = "http"', f'path = "r{i}"',
              '[[route.output]]', 'name = "hls"', 'type = "hls"', f'path = "r{i}"', '']
    p, _ = start(binary, "\n".join(c))
    try:
        time.sleep(10)
        a = rss_mib(p.pid)
        time.sleep(seconds)
        return a, rss_mib(p.pid)
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=12_000)
    ap.add_argument("--routes", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("bins", nargs="*", help="castpoint binaries (default: target/release/castpoint)")
    a = ap.parse_args()
    a.bins = a.bins or [str(ROOT / "target/release/castpoint")]
    if a.writes < 2000:
        ap.error("--writes must be at least 2000")
    print(f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores; no BACnet client")
    print()
    print(f"| build | RSS after 2,000 writes MiB | after {a.writes:,} | KiB per write | "
          f"writes/s | {a.routes} idle routes: RSS at 10 s MiB | {a.seconds:.0f} s later | KiB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for b in a.bins:
        w0, w1, rate = writes(b, a.writes)
        r0, r1 = routes(b, a.routes, a.seconds)
        print(f"| {b} | {w0:.0f} | {w1:.0f} | {(w1 - w0) * 1024 / (a.writes - 2000):.1f} | "
              f"{rate:.0f} | {r0:.0f} | {r1:.0f} | {(r1 - r0) * 1024 / a.seconds:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
