#!/usr/bin/env python3
"""BACnet ReadPropertyMultiple ALL of 4 objects (AI, AV, BO, MSV) under concurrency: castpoint vs bacnet-stack's demo server `bacserv`, in the same run (issue 25 item 2).

Usage: python3 bench/bacnet_rpm_peer.py [--seconds 5] [--window 1,8] [--rounds 2]
           [--clients 2] [--bin target/release/castpoint] [--bacserv /tmp/bacnet-stack/bin/bacserv]
           [--before OLD_CASTPOINT] [--reuse-ids]

`bacserv` is not built here: build it by hand from a bacnet-stack snapshot
outside this repository (bench/README.md, *BACnet RPM vs bacnet-stack*), and
pass its path (or set BACSERV). Without it the castpoint rows are printed
alone.

The request is the same bytes for both servers: one unsegmented confirmed
ReadPropertyMultiple of property ALL of analog-input 1, analog-value 1,
binary-output 1 and multi-state-value 1 (instance 1 exists in both: castpoint's
map and the objects bacserv creates at start-up). The client is raw UDP in
`--clients` processes (blocking sockets, no asyncio), the window split among
them, each with its own socket; an invoke id still in flight on a socket is
never reused (a reused one is a retransmission to the server, Clause 5.4, and
goes unanswered by design: that was a client artefact, not a server loss).
A request unanswered after 2 s is counted and replaced.

Per cell: requests/s, p50/p99/max latency, unanswered, answer octets, server
process CPU (utime+stime from /proc/<pid>/stat, % of one core and µs per
request), the client's CPU (so a client-bound cell shows), and whole-machine
CPU from /proc/stat with softirq apart (the machine is shared: other work
shows there). Cells alternate between the servers, `--rounds` times each,
and their figures are pooled.
"""
import argparse
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
OBJECTS = [(0, 1), (2, 1), (4, 1), (19, 1)]  # AI 1, AV 1, BO 1, MSV 1
TICK = os.sysconf("SC_CLK_TCK")


def rpm_all(invoke):
    # BVLC original-unicast, NPDU expecting reply, confirmed request (no
    # segmentation accepted, max APDU 1476), RPM, ALL (8) of each object.
    d = bytearray([0x01, 0x04, 0x00, 0x05, invoke, 14])
    for ty, inst in OBJECTS:
        d += b"\x0c" + struct.pack(">I", (ty << 22) | inst) + b"\x1e\x09\x08\x1f"
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(d) + 4) + bytes(d)


def client(port, start_at, seconds, window, reuse, out):
    """One client process: `window` requests outstanding on one socket.
    `reuse`: take invoke ids in turn even when one is still in flight (what
    bench/bacnet.py's asyncio client does), to show what that costs."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.05)
    reqs = [rpm_all(i) for i in range(256)]
    pending = {}  # invoke id -> send times (more than one only with `reuse`)
    lat, unanswered, bad, octets, skipped = [], 0, 0, 0, 0
    nxt = 0
    perf = time.perf_counter

    def send_one():
        nonlocal nxt, skipped
        while nxt in pending:
            # Still in flight after 255 newer requests: the next id instead
            # (counted: each would be a lost request with `reuse`).
            skipped += 1
            if reuse:
                break
            nxt = (nxt + 1) % 256
        pending.setdefault(nxt, []).append(perf())
        s.send(reqs[nxt])
        nxt = (nxt + 1) % 256

    while time.time() < start_at:
        time.sleep(0.001)
    c0 = os.times()
    deadline = perf() + seconds
    t0 = perf()
    for _ in range(window):
        send_one()
    while True:
        now = perf()
        if now >= deadline:
            break
        try:
            a = s.recv(4096)
        except (TimeoutError, socket.timeout):
            for inv, ts in list(pending.items()):
                lost = [t for t in ts if now - t > 2.0]
                if lost:
                    pending[inv] = ts[len(lost):]
                    if not pending[inv]:
                        del pending[inv]
                    for _ in lost:
                        unanswered += 1
                        send_one()
            continue
        ts = pending.get(a[7]) if len(a) > 7 else None
        if not ts:
            continue  # a late answer to a request already counted as lost
        t = ts.pop(0)
        if not ts:
            del pending[a[7]]
        lat.append(perf() - t)
        if a[6] >> 4 != 3:
            bad += 1
        octets = len(a)
        send_one()
    el = perf() - t0
    c1 = os.times()
    out.send((lat, unanswered, bad, octets, el,
              (c1.user - c0.user) + (c1.system - c0.system), skipped))
    out.close()


def proc_cpu(pid):
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime, stime


def machine_cpu():
    f = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    return busy, f[6], sum(f[:8])


def run_cell(pid, port, seconds, window, clients, reuse=False):
    clients = max(1, min(clients, window))
    split = [window // clients + (1 if k < window % clients else 0) for k in range(clients)]
    pipes, procs = [], []
    start_at = time.time() + 0.3
    for w in split:
        r, wr = multiprocessing.Pipe(False)
        p = multiprocessing.Process(target=client, args=(port, start_at, seconds, w, reuse, wr))
        p.start()
        pipes.append(r)
        procs.append(p)
    while time.time() < start_at:
        time.sleep(0.001)
    c0, m0 = proc_cpu(pid), machine_cpu()
    res = [r.recv() for r in pipes]
    c1, m1 = proc_cpu(pid), machine_cpu()
    for p in procs:
        p.join()
    lat = [x for r in res for x in r[0]]
    total = m1[2] - m0[2]
    return {
        "lat": lat,
        "n": len(lat),
        "unanswered": sum(r[1] for r in res),
        "bad": sum(r[2] for r in res),
        "octets": max(r[3] for r in res),
        "secs": max(r[4] for r in res),
        "cpu": c1 - c0,
        "client_cpu": sum(r[5] for r in res),
        "skipped": sum(r[6] for r in res),
        "m_busy": (m1[0] - m0[0]) / max(total, 1),
        "m_soft": (m1[1] - m0[1]) / max(total, 1),
    }


def pool(cells):
    lat = sorted(x for c in cells for x in c["lat"])
    secs = sum(c["secs"] for c in cells)
    n = len(lat)
    return {
        "rate": n / secs,
        "p50": lat[n // 2] * 1e3 if n else float("nan"),
        "p99": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "max": lat[-1] * 1e3 if n else float("nan"),
        "n": n,
        "unanswered": sum(c["unanswered"] for c in cells),
        "skipped": sum(c["skipped"] for c in cells),
        "bad": sum(c["bad"] for c in cells),
        "octets": max(c["octets"] for c in cells),
        "cpu_pct": 100 * sum(c["cpu"] for c in cells) / secs,
        "us_req": 1e6 * sum(c["cpu"] for c in cells) / max(n, 1),
        "client_pct": 100 * sum(c["client_cpu"] for c in cells) / secs,
        "m_busy": 100 * statistics.mean(c["m_busy"] for c in cells) * os.cpu_count(),
        "m_soft": 100 * statistics.mean(c["m_soft"] for c in cells) * os.cpu_count(),
    }


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_castpoint(binary):
    data = tempfile.mkdtemp(prefix="castpoint-bench-rpm-")
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


def probe(port):
    """One request answered (the server is up), else None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        for _ in range(50):
            s.sendto(rpm_all(1), ("127.0.0.1", port))
            try:
                return s.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
    finally:
        s.close()
    return None


def start_bacserv(binary):
    port = free_port()
    env = dict(os.environ, BACNET_IP_PORT=str(port), BACNET_IFACE="lo")
    p = subprocess.Popen([binary, "389077", "bacserv-bench"], env=env, cwd=tempfile.mkdtemp(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe(port) is None:
        p.kill()
        raise RuntimeError("bacserv did not answer")
    return p, port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--window", default="1,8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2,
                    help="client processes sharing the window (each its own socket)")
    ap.add_argument("--reuse-ids", action="store_true",
                    help="reuse an invoke id still in flight (the old client's behaviour)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "castpoint"))
    ap.add_argument("--before", help="a second castpoint binary (an earlier build) measured in "
                    "the same run, for before/after figures")
    ap.add_argument("--bacserv", default=os.environ.get("BACSERV", "/tmp/bacnet-stack/bin/bacserv"))
    a = ap.parse_args()
    servers = []
    cp, cp_port = start_castpoint(a.bin)
    servers.append(("castpoint", cp, cp_port))
    if a.before:
        b, b_port = start_castpoint(a.before)
        servers.append(("castpoint-before", b, b_port))
    if os.path.exists(a.bacserv):
        bs, bs_port = start_bacserv(a.bacserv)
        servers.append(("bacserv", bs, bs_port))
    else:
        print(f"(no bacserv at {a.bacserv}: castpoint alone)\n")
    windows = [int(x) for x in a.window.split(",")]
    cells = {}
    idle = {}
    try:
        # Idle CPU (castpoint's default config runs a demo route): it is in
        # every cell's server CPU, so it is printed to be discounted.
        c0 = {name: proc_cpu(p.pid) for name, p, _ in servers}
        time.sleep(2)
        idle = {name: 50 * (proc_cpu(p.pid) - c0[name]) for name, p, _ in servers}
        for _, p, port in servers:
            run_cell(p.pid, port, 0.5, 8, a.clients)  # warm-up
        for r in range(a.rounds):
            for w in windows:
                # Rotated each round, so no server always runs first.
                k = r % len(servers)
                order = servers[k:] + servers[:k]
                for name, p, port in order:
                    cells.setdefault((name, w), []).append(
                        run_cell(p.pid, port, a.seconds, w, a.clients, a.reuse_ids))
    finally:
        for _, p, _ in servers:
            p.terminate()
            p.wait()
    print(f"RPM ALL of AI 1, AV 1, BO 1, MSV 1 (one request, unsegmented), "
          f"{a.seconds:g} s x {a.rounds} rounds per cell (alternating), {a.clients} client "
          f"processes, loopback, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"castpoint {a.bin}{' (invoke ids reused while in flight)' if a.reuse_ids else ''}; "
          f"idle CPU % " + ", ".join(f"{n} {v:.1f}" for n, v in idle.items()) + "\n")
    print("| server | window | req/s | p50 ms | p99 ms | max ms | answered | unanswered | "
          "id in flight after 255 newer | "
          "octets | server CPU % | server µs/req | client CPU % | machine busy % | "
          "machine softirq % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pooled = {k: pool(v) for k, v in cells.items()}
    for (name, w), s in sorted(pooled.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {name} | {w} | {s['rate']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | "
              f"{s['max']:.1f} | {s['n']} | {s['unanswered']} | {s['skipped']} | {s['octets']} | "
              f"{s['cpu_pct']:.0f} | {s['us_req']:.1f} | {s['client_pct']:.0f} | "
              f"{s['m_busy']:.0f} | {s['m_soft']:.1f} |")
    names = [n for n, _, _ in servers]
    if "bacserv" in names:
        print()
        for w in windows:
            b = pooled[("bacserv", w)]
            for n in names:
                if n == "bacserv":
                    continue
                c = pooled[(n, w)]
                print(f"window {w}: {n}/bacserv req/s x{c['rate'] / b['rate']:.2f}, "
                      f"p99 x{c['p99'] / b['p99']:.2f}, CPU per request "
                      f"x{c['us_req'] / b['us_req']:.2f}")
    print("\n(machine % is of one core, summed over all cores; bad answers (not a "
          "ComplexACK): " + ", ".join(f"{n} w{w} {s['bad']}" for (n, w), s in pooled.items()) + ")")


if __name__ == "__main__":
    sys.exit(main())
