#!/usr/bin/env python3
"""Route point freshness at scale (issue 20: "100 routes with 4 outputs each: every point fresh within its period"): N routes, each a generator input at 1 Mbit/s feeding 4 UDP outputs; after a settling time, every route's block is read over REST once a second for a while, and each point's status and age (now - updated) are checked against its period.

Usage: python3 bench/routes_fresh.py [--routes 100] [--outputs 4] [--seconds 10] [--bin PATH]

A point counts as fresh when it reads `ok` (or `overridden`) and, for a
measurement, was updated no longer ago than its period plus the 1-s
publication tick (route measurements are published once a second); a
command's value is its priority array's, current by construction. Points that are
truthfully unavailable are counted apart: the output points of output
numbers a route does not have (the block is sized for the template's
`max_outputs`). Nothing leaves 127.0.0.1: the UDP outputs go to one bound,
unread socket of this script.
"""
import argparse
import collections
import datetime
import http.client
import json
import os
import pathlib
import socket
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "lib"))
import launch  # noqa: E402  (bench/lib is not a package)


def config(n, outputs, sink):
    host, port = sink.getsockname()
    c = ["[telemetry]", "enabled = true", ""]
    for i in range(1, n + 1):
        c += ["[[route]]", f'name = "r{i:03d}"', "[[route.input]]", 'name = "gen"',
              'type = "generator"', "bitrate = 1000000"]
        for o in range(1, outputs + 1):
            c += ["[[route.output]]", f'name = "o{o}"', 'type = "udp"', f'dest = "{host}:{port}"']
        c.append("")
    return "\n".join(c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--outputs", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--settle", type=float, default=8.0)
    rel = ROOT / "target" / "release" / "castpoint"
    ap.add_argument("--bin", default=str(rel if rel.exists() else ROOT / "target" / "debug" / "castpoint"))
    a = ap.parse_args()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    d = tempfile.mkdtemp(prefix="castpoint-bench-fresh-")
    cfg = os.path.join(d, "castpoint.toml")
    pathlib.Path(cfg).write_text(config(a.routes, a.outputs, sink))
    p, addrs, ready = launch.start(a.bin, cfg, os.path.join(d, "data"))
    http_addr = addrs["http"]
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    host, port = http_addr.rsplit(":", 1)
    try:
        time.sleep(a.settle)  # start-up grace and first publications, not a wait on a condition
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        stats = collections.Counter()
        worst = (0.0, None)
        late = collections.Counter()
        for _ in range(a.seconds):
            tick = time.perf_counter()
            for i in range(1, a.routes + 1):
                conn.request("GET", f"/api/routes/r{i:03d}/points")
                r = conn.getresponse()
                body = json.loads(r.read())
                now = datetime.datetime.now(datetime.timezone.utc)
                for pt in body["points"]:
                    out = pt.get("route", {}).get("output")
                    if out is not None and out > a.outputs:
                        stats["unused output"] += 1
                        continue
                    stats["sampled"] += 1
                    if pt["status"] not in ("ok", "overridden"):
                        stats[f"status {pt['status']}"] += 1
                        late[pt["id"].split(".", 2)[2]] += 1
                        continue
                    if pt["writable"]:
                        # A command's value is its priority array's: current
                        # by construction, updated only when written.
                        stats["commands"] += 1
                        continue
                    stats["measurements"] += 1
                    age = (now - datetime.datetime.fromisoformat(pt["updated"])).total_seconds()
                    limit = pt["period_s"] + 1.0 if pt["period_s"] > 0 else None
                    if limit is not None and age > limit:
                        stats["older than period + 1 s"] += 1
                        late[pt["id"].split(".", 2)[2]] += 1
                    if pt["period_s"] > 0 and age / pt["period_s"] > worst[0]:
                        worst = (age / pt["period_s"], pt["id"])
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - tick)))
        kind = "release" if ("release" in a.bin or "profiling" in a.bin) else "debug"
        print(f"{a.routes} routes x {a.outputs} UDP outputs, generator inputs at 1 Mbit/s, {kind} binary, "
              f"ready {ready:.2f} s, {a.seconds} rounds, load average {os.getloadavg()[0]:.1f}\n")
        fresh = stats["sampled"] - sum(v for k, v in stats.items() if k.startswith("status ") or k.startswith("older"))
        print("| point samples | measurements | commands | fresh | not ok | older than period + 1 s | unused output points (unavailable) | worst measurement age / period |")
        print("|---:|---:|---:|---:|---:|---:|---:|---|")
        not_ok = sum(v for k, v in stats.items() if k.startswith("status "))
        print(f"| {stats['sampled']:,} | {stats['measurements']:,} | {stats['commands']:,} | {fresh:,} | {not_ok:,} | {stats['older than period + 1 s']:,} | "
              f"{stats['unused output']:,} | {worst[0]:.2f} ({worst[1]}) |")
        if late:
            print("\nnot fresh, by point:", dict(late.most_common(10)))
            print("statuses:", {k: v for k, v in stats.items() if k.startswith("status ")})
    finally:
        p.terminate()
        p.wait(timeout=15)


if __name__ == "__main__":
    main()
