#!/usr/bin/env python3
"""Idle routes (issue 25): N routes whose UDP inputs nobody sends to, each with 2 UDP outputs, an HTTP-TS and an HLS output; prints, per build, the process's CPU (% of a core, from the threads' scheduler run time) and its context switches per second over a window, with RSS. Builds given together run alternately, so they share the machine's drift.

Usage: python3 bench/routes_idle.py [--routes 500] [--seconds 20] [--reps 3] BIN [BIN ...]

A route with no signal has nothing to move: what it costs is timers,
samplers and the protocol servers' own polling (the point bridge's
snapshots, the BACnet stack's Trend Logs). A building that keeps standby
feeds configured pays this all day. Nothing is sent anywhere: the UDP
outputs' destination is 127.0.0.1:9 and no datagram is ever produced.
"""
import argparse
import glob
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "lib"))
import launch  # noqa: E402  (bench/lib is not a package)
import procstat  # noqa: E402


def config(n):
    c = ['[http]', 'bind = "127.0.0.1:0"', '[bacnet]', 'bind = "127.0.0.1:0"',
         '[modbus]', 'bind = "127.0.0.1:0"', '[rtmp]', 'enabled = false', '']
    for i in range(n):
        c += ['[[route]]', f'name = "r{i}"',
              '[[route.input]]', 'type = "udp"', 'bind = "127.0.0.1:0"']
        for k in range(2):
            c += ['[[route.output]]', f'name = "u{k}"', 'type = "udp"', 'dest = "127.0.0.1:9"']
        c += ['[[route.output]]', 'name = "ts"', 'type = "http"', f'path = "r{i}"',
              '[[route.output]]', 'name = "hls"', 'type = "hls"', f'path = "r{i}"', '']
    return "\n".join(c)


def threads_ns_and_switches(pid):
    """(run time in ns, context switches) summed over the process's threads
    (/proc/PID/task/*/schedstat and status: exact, not 10-ms ticks)."""
    ns = switches = 0
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            ns += int(open(f"{t}/schedstat").read().split()[0])
            for line in open(f"{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return ns, switches


def run(binary, n, seconds, settle):
    d = tempfile.mkdtemp(prefix="castpoint-idle-")
    cfg = os.path.join(d, "castpoint.toml")
    open(cfg, "w").write(config(n))
    p, _, ready = launch.start(binary, cfg, os.path.join(d, "data"))
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    try:
        time.sleep(settle)
        (ns0, sw0), t0 = threads_ns_and_switches(p.pid), time.perf_counter()
        time.sleep(seconds)
        (ns1, sw1), t1 = threads_ns_and_switches(p.pid), time.perf_counter()
        return {"ready_s": ready, "cpu_pct": (ns1 - ns0) / 1e9 / (t1 - t0) * 100,
                "switches_per_s": (sw1 - sw0) / (t1 - t0), "rss_mib": procstat.rss_mib(p.pid)}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bins", nargs="+")
    ap.add_argument("--routes", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    load = os.getloadavg()
    rows = {b: [] for b in a.bins}
    for rep in range(a.reps):
        for b in a.bins:
            rows[b].append(run(b, a.routes, a.seconds, a.settle))
            print(f"rep {rep + 1}: {b}: {rows[b][-1]['cpu_pct']:.2f} %", file=sys.stderr)
    print(f"{a.routes} idle routes (UDP inputs with no sender; 2 UDP + HTTP-TS + HLS outputs), "
          f"{a.seconds:.0f} s window after {a.settle:.0f} s, {a.reps} alternating reps; "
          f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} cores")
    print()
    print("| build | CPU % of a core (median) | each rep | context switches/s (median) | RSS MiB | ready s |")
    print("|---|---|---|---|---|---|")
    for b, rs in rows.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        each = ", ".join(f"{r['cpu_pct']:.2f}" for r in rs)
        print(f"| {b} | {med('cpu_pct'):.2f} | {each} | "
              f"{med('switches_per_s'):.0f} | {med('rss_mib'):.0f} | {med('ready_s'):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
