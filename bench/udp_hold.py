#!/usr/bin/env python3
"""UDP hold benchmark (issue 25 item 1): castpoint with 1 and 4 UDP outputs at 10 Mbit/s under several `udp_coalesce` settings, interleaved with N srt-live-transmit relays in the same run; prints CPU % (process, and whole-machine softirq over the same window), the castpoint/srt-live-transmit CPU ratio and added latency p50/p99.

Usage: python3 bench/udp_hold.py [--bin target/release/castpoint] [--source FILE.ts]
                                 [--n 1,4] [--settings off,auto] [--reps 3] [--secs 6]
                                 [--lean 0,1500,2000] [--before EARLIER_BUILD] [--idle]

Built on bench/fanout.py (same 10 Mbit/s Python source, same probe, same
unread sink sockets). Each repetition runs every castpoint setting and the
peer back to back, so they share the machine's load; the table prints
medians and every repetition's CPU figure. Softirq is machine-wide (other
processes' network work lands there too): it is printed beside each row
so that a setting that moves work into softirq cannot look cheaper than it
is.

`--lean` adds bench/lean_relay.c (built here with cc) at each listed period
in microseconds (0: a poll() wake-up per datagram): one C thread that does
nothing but sleep, recvmmsg and send with GSO. It is the floor for a relay
at that pace on this machine, so it tells what a latency budget can cost at
best, whatever the relay is written in.

CPU is the processes' scheduler run time (fanout.cpu_ticks), so figures of
1-2 % of a core are not rounded to whole 10-ms ticks.
"""
import argparse
import importlib.util
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("fanout", ROOT / "fanout.py")
fanout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fanout)

TICK = os.sysconf("SC_CLK_TCK")


def softirq():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[6], sum(v[:8])


_measure = fanout.measure


def measure_with_softirq(pids, probe, secs):
    """fanout.measure, plus the machine's softirq % of one core over the same window."""
    time.sleep(2)
    probe.on = True
    s0, c0, t0 = softirq(), fanout.cpu_ticks(pids), time.time()
    time.sleep(secs)
    s1, c1, t1 = softirq(), fanout.cpu_ticks(pids), time.time()
    probe.on = False
    cpu = (c1 - c0) / TICK / (t1 - t0) * 100
    soft = (s1[0] - s0[0]) / TICK / (t1 - t0) * 100
    lat = sorted(probe.lat)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return cpu, fanout.rss_mib(pids), p(0.5), p(0.99), len(lat), soft


fanout.measure = measure_with_softirq


def build_lean():
    import subprocess
    import tempfile
    out = os.path.join(tempfile.mkdtemp(prefix="lean-relay-"), "lean_relay")
    subprocess.run(["cc", "-O2", "-o", out, str(ROOT / "lean_relay.c")], check=True)
    return out


def run_lean(exe, n, secs, src_file, period_us):
    """The lean relay from one source port to N destinations (the probe and
    N-1 unread sinks): one process, as castpoint is one."""
    import subprocess
    port = fanout.free_port()
    src = fanout.Source(src_file, [("127.0.0.1", port)])
    probe = fanout.Probe(src)
    extra = fanout.sinks(n - 1)
    dests = [probe.addr] + [s.getsockname() for s in extra]
    proc = subprocess.Popen([exe, str(port), str(period_us)] + [str(d[1]) for d in dests])
    time.sleep(1)
    probe.t.start()
    src.t.start()
    r = fanout.measure([proc.pid], probe, secs)
    src.stop = probe.stop = True
    fanout.stop_all([proc])
    return r


def run_idle(binary, n, secs):
    """castpoint with the same route and N outputs but no source: the fixed
    cost (timers, point publication, telemetry) that every setting pays
    and a single-purpose relay does not. The route has no signal here, so
    its alarms are raised; the publication work is the same."""
    inport = fanout.free_port()
    extra = fanout.sinks(n)
    route = f'[[route]]\nname = "bench"\n[[route.input]]\ntype = "udp"\nbind = "127.0.0.1:{inport}"\n'
    for i, s in enumerate(extra):
        d = s.getsockname()
        route += f'[[route.output]]\nname = "o{i}"\ntype = "udp"\ndest = "{d[0]}:{d[1]}"\n'
    proc, cfg = fanout.start_castpoint(binary, route)
    time.sleep(2)
    c0, t0 = fanout.cpu_ticks([proc.pid]), time.time()
    time.sleep(secs)
    c1, t1 = fanout.cpu_ticks([proc.pid]), time.time()
    proc.terminate()
    proc.wait()
    os.unlink(cfg)
    return ((c1 - c0) / TICK / (t1 - t0) * 100, 0.0, float("nan"), float("nan"), 0, 0.0)



def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT.parent / "target/release/castpoint"))
    ap.add_argument("--source", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                      "castpoint-bench-10mbit.ts"),
                    help="10 Mbit/s TS file (made as bench/fanout.sh makes it when missing)")
    ap.add_argument("--n", default="1,4")
    ap.add_argument("--settings", default="off,auto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=6)
    ap.add_argument("--lean", default="", help="lean C relay periods in us, e.g. 0,1500,2000")
    ap.add_argument("--before", help="a second castpoint binary (an earlier build) run at the same "
                    "settings, interleaved, for before/after figures")
    ap.add_argument("--idle", action="store_true", help="also measure castpoint with the route "
                    "but no traffic (its fixed cost), for --bin and --before")
    a = ap.parse_args()
    lean = [int(x) for x in a.lean.split(",") if x]
    lean_exe = build_lean() if lean else None
    if not os.path.exists(a.source):
        import subprocess
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc=size=1280x720:rate=25", "-f", "lavfi", "-i", "sine",
                        "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "8M", "-maxrate", "8M",
                        "-bufsize", "2M", "-g", "50", "-c:a", "aac", "-muxrate", "10M", "-t", "20",
                        "-f", "mpegts", a.source], check=True)
    # (label, binary, udp_coalesce) for every castpoint cell of a repetition.
    cells = [(s, a.bin, s) for s in a.settings.split(",")]
    if a.before:
        cells += [(f"{s} (before)", a.before, s) for s in a.settings.split(",")]
    settings = [c[0] for c in cells]
    load0 = os.getloadavg()
    rows = []
    for n in [int(x) for x in a.n.split(",")]:
        runs = {s: [] for s in settings}
        runs.update({f"lean{p}": [] for p in lean})
        runs["slt"] = []
        idle = (["idle"] + (["idle (before)"] if a.before else [])) if a.idle else []
        runs.update({k: [] for k in idle})
        for r in range(a.reps):
            for label, exe, s in cells:
                print(f"N={n} rep {r + 1}: castpoint udp_coalesce={label}", file=sys.stderr, flush=True)
                runs[label].append(fanout.run_castpoint(exe, n, a.secs, a.source, s))
            if a.idle:
                for label, exe in [("idle", a.bin)] + ([("idle (before)", a.before)] if a.before else []):
                    print(f"N={n} rep {r + 1}: castpoint {label}", file=sys.stderr, flush=True)
                    runs[label].append(run_idle(exe, n, a.secs))
            for p in lean:
                print(f"N={n} rep {r + 1}: lean relay {p} us", file=sys.stderr, flush=True)
                runs[f"lean{p}"].append(run_lean(lean_exe, n, a.secs, a.source, p))
            print(f"N={n} rep {r + 1}: srt-live-transmit", file=sys.stderr, flush=True)
            runs["slt"].append(fanout.run_peers("slt", n, a.secs, a.source))
        slt = med([x[0] for x in runs["slt"]])
        for s in settings + idle + [f"lean{p}" for p in lean] + ["slt"]:
            xs = runs[s]
            cpu = med([x[0] for x in xs])
            if s == "slt":
                name = "srt-live-transmit x N"
            elif s.startswith("idle"):
                name = f"castpoint {s}: the route, no traffic"
            elif s.startswith("lean"):
                name = f"lean C relay, period {s[4:]} us" if s != "lean0" else "lean C relay, per datagram"
            else:
                name = f"castpoint udp_coalesce={s}"
            rows.append((n, name, cpu, [round(x[0], 2) for x in xs], cpu / slt if slt else float("nan"),
                         med([x[2] for x in xs]), med([x[3] for x in xs]), med([x[5] for x in xs])))
    print(f"10 Mbit/s, {a.secs:.0f} s per run, {a.reps} interleaved reps (medians); load average "
          f"{load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} cores")
    print()
    print("| N | relay | CPU % of a core | each rep | / srt-live-transmit | p50 ms | p99 ms | machine softirq % |")
    print("|---|---|---|---|---|---|---|---|")
    for n, name, cpu, each, ratio, p50, p99, soft in rows:
        print(f"| {n} | {name} | {cpu:.2f} | {each} | {ratio:.2f} | {p50:.2f} | {p99:.2f} | {soft:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
