#!/usr/bin/env python3
"""Fan-out benchmark: one 10 Mbit/s MPEG-TS input to N UDP outputs through castpoint, beside N srt-live-transmit relays and N `ffmpeg -c copy` relays; then to N SRT callers of one castpoint SRT listener output beside N srt-live-transmit UDP->SRT-listener relays (one caller each). Prints Markdown tables (CPU % of one core, RSS, added latency p50/p99)."""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

DG = 1316
RATE = 10_000_000  # bit/s
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids):
    """CPU time of the processes `pids`, in clock ticks (a float).

    Read from each thread's /proc/PID/task/TID/schedstat (the scheduler's
    run time in ns), not from utime + stime in /proc/PID/stat: those are
    whole 10-ms ticks, and a relay at 1-2 % of a core runs only 6-12 of
    them in a 6-s window, so one tick more or less moved a figure by 8-17
    %. Threads that ended inside the window are not counted (the relays
    measured here keep theirs); where schedstat is missing, utime + stime.
    """
    t = 0.0
    for p in pids:
        try:
            ns = 0
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    ns += int(f.read().split()[0])
            t += ns * TICK / 1e9
        except (OSError, ValueError, IndexError):
            try:
                with open(f"/proc/{p}/stat") as f:
                    parts = f.read().rsplit(")", 1)[1].split()
                t += int(parts[11]) + int(parts[12])  # utime + stime
            except OSError:
                pass
    return t


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Source:
    """Sends the file's datagrams at 10 Mbit/s to every address in `dests`
    (one copy per destination for per-process peers) and timestamps them."""

    def __init__(self, path, dests):
        data = open(path, "rb").read()
        n = len(data) // DG
        self.dgs = [data[i * DG:(i + 1) * DG] for i in range(n)]
        self.dests = dests
        self.sent = {}
        self.stop = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        period = DG * 8 / RATE
        start = time.perf_counter()
        i = 0
        while not self.stop:
            dg = self.dgs[i % len(self.dgs)]
            # Key every non-null packet by its payload so that relays that
            # regroup packets (ffmpeg) can be matched too.
            now = time.perf_counter()
            for k in range(0, DG, 188):
                if dg[k + 1] & 0x1F != 0x1F or dg[k + 2] != 0xFF:
                    self.sent[dg[k + 4:k + 188]] = now
            for d in self.dests:
                self.sock.sendto(dg, d)
            i += 1
            wait = start + i * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)


class Probe:
    """Receives one output and records added latency."""

    def __init__(self, src):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()
        self.src = src
        self.lat = []
        self.on = False
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop:
            try:
                dg = self.sock.recv(65536)
            except socket.timeout:
                continue
            now = time.perf_counter()
            t0 = None
            for k in range(0, len(dg) - 187, 188):
                t0 = self.src.sent.get(dg[k + 4:k + 188])
                if t0 is not None:
                    break
            if self.on and t0 is not None:
                self.lat.append((now - t0) * 1000)


def sinks(n):
    """Bound, unread sockets: the kernel accepts then drops, as a real
    receiver would cost the sender, without ICMP errors."""
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        out.append(s)
    return out


def measure(pids, probe, secs):
    time.sleep(2)  # warm-up
    probe.on = True
    c0, t0 = cpu_ticks(pids), time.time()
    time.sleep(secs)
    c1, t1 = cpu_ticks(pids), time.time()
    probe.on = False
    cpu = (c1 - c0) / TICK / (t1 - t0) * 100
    lat = sorted(probe.lat)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return cpu, rss_mib(pids), p(0.5), p(0.99), len(lat)


def start_castpoint(binary, route_toml):
    """castpoint with only HTTP besides the route (on an ephemeral port),
    once it prints `ready`. Returns (process, config path)."""
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[http]\nbind = "127.0.0.1:0"\n[bacnet]\nenabled = false\n[modbus]\nenabled = false\n')
    cfg.write(route_toml)
    cfg.close()
    proc = subprocess.Popen([binary, "run", "--config", cfg.name, "--data-dir", tempfile.mkdtemp()],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("castpoint exited before it was ready")
        if line.strip() == "ready":
            return proc, cfg.name


def run_castpoint(binary, n, secs, src_file, coalesce=""):
    inport = free_port()
    extra = sinks(n - 1)
    src = Source(src_file, [("127.0.0.1", inport)])
    probe = Probe(src)
    route = '[[route]]\nname = "bench"\n'
    if coalesce:
        route += f'udp_coalesce = "{coalesce}"\n'
    route += f'[[route.input]]\ntype = "udp"\nbind = "127.0.0.1:{inport}"\n'
    dests = [probe.addr] + [s.getsockname() for s in extra]
    for i, d in enumerate(dests):
        route += f'[[route.output]]\nname = "o{i}"\ntype = "udp"\ndest = "{d[0]}:{d[1]}"\n'
    proc, cfg = start_castpoint(binary, route)
    probe.t.start()
    src.t.start()
    r = measure([proc.pid], probe, secs)
    src.stop = probe.stop = True
    proc.terminate()
    proc.wait()
    os.unlink(cfg)
    return r


SRT_LATENCY_MS = 50


def slt_caller(listener, dest):
    """An srt-live-transmit caller pulling from an SRT listener into UDP
    `dest` (the viewer side: its CPU is not counted for either party)."""
    return subprocess.Popen(
        ["srt-live-transmit", "-q", f"srt://127.0.0.1:{listener}?latency={SRT_LATENCY_MS}",
         f"udp://{dest[0]}:{dest[1]}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_all(procs):
    """Terminate, then kill what is still there after 3 s (srt-live-transmit
    may sit in a read once the source stops)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_castpoint_srt(binary, n, secs, src_file):
    """One SRT listener output (what a user deploys: one port, any number
    of viewers, streamid access) serving N srt-live-transmit callers."""
    inport, lport = free_port(), free_port()
    extra = sinks(n - 1)
    src = Source(src_file, [("127.0.0.1", inport)])
    probe = Probe(src)
    proc, cfg = start_castpoint(
        binary,
        f'[[route]]\nname = "bench"\n[[route.input]]\ntype = "udp"\nbind = "127.0.0.1:{inport}"\n'
        f'[[route.output]]\nname = "srt"\ntype = "srt"\nmode = "listener"\n'
        f'addr = "127.0.0.1:{lport}"\nlatency = "{SRT_LATENCY_MS}ms"\n')
    dests = [probe.addr] + [s.getsockname() for s in extra]
    callers = [slt_caller(lport, d) for d in dests]
    time.sleep(1)
    probe.t.start()
    src.t.start()
    r = measure([proc.pid], probe, secs)
    src.stop = probe.stop = True
    stop_all(callers)
    proc.terminate()
    proc.wait()
    os.unlink(cfg)
    return r


def run_slt_srt(n, secs, src_file):
    """N srt-live-transmit relays UDP -> SRT listener, one caller each."""
    ports = [free_port() for _ in range(n)]
    lports = [free_port() for _ in range(n)]
    src = Source(src_file, [("127.0.0.1", p) for p in ports])
    probe = Probe(src)
    extra = sinks(n - 1)
    dests = [probe.addr] + [s.getsockname() for s in extra]
    relays = [subprocess.Popen(
        ["srt-live-transmit", "-q", f"udp://127.0.0.1:{p}",
         f"srt://127.0.0.1:{lp}?mode=listener&latency={SRT_LATENCY_MS}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p, lp in zip(ports, lports)]
    time.sleep(0.5)
    callers = [slt_caller(lp, d) for lp, d in zip(lports, dests)]
    time.sleep(1)
    probe.t.start()
    src.t.start()
    r = measure([p.pid for p in relays], probe, secs)
    src.stop = probe.stop = True
    stop_all(callers + relays)
    return r


def run_peers(kind, n, secs, src_file):
    ports = [free_port() for _ in range(n)]
    src = Source(src_file, [("127.0.0.1", p) for p in ports])
    probe = Probe(src)
    extra = sinks(n - 1)
    dests = [probe.addr] + [s.getsockname() for s in extra]
    procs = []
    for p, d in zip(ports, dests):
        if kind == "slt":
            cmd = ["srt-live-transmit", "-q", f"udp://127.0.0.1:{p}", f"udp://{d[0]}:{d[1]}"]
        else:
            cmd = ["ffmpeg", "-loglevel", "quiet", "-i", f"udp://127.0.0.1:{p}?fifo_size=1000000",
                   "-c", "copy", "-f", "mpegts", f"udp://{d[0]}:{d[1]}?pkt_size=1316"]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
    probe.t.start()
    src.t.start()
    r = measure([p.pid for p in procs], probe, secs)
    src.stop = probe.stop = True
    stop_all(procs)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--n", default="1,10,50,100")
    ap.add_argument("--secs", type=float, default=8)
    ap.add_argument("--max-slt", type=int, default=50)
    ap.add_argument("--max-ffmpeg", type=int, default=10)
    ap.add_argument("--srt-n", default="1,10,50")
    ap.add_argument("--coalesce", default="", help="the route's udp_coalesce (default: castpoint's)")
    ap.add_argument("--reps", type=int, default=1,
                    help="runs per row, castpoint and peers interleaved; medians are printed "
                         "(a single caller's few % of a core moves by +-30%% run to run)")
    a = ap.parse_args()
    if not a.n:
        srt_table(a)
        return
    print("| N | castpoint CPU % | RSS MiB | p50 ms | p99 ms | srt-live-transmit x N CPU % | RSS MiB | p50 ms | p99 ms | ffmpeg -c copy x N CPU % | RSS MiB | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in a.n.split(",")]:
        row = [str(n)]
        print(f"N={n} ...", file=sys.stderr, flush=True)
        runs = {"cp": [], "slt": [], "ffmpeg": []}
        for _ in range(a.reps):
            runs["cp"].append(run_castpoint(a.bin, n, a.secs, a.source, a.coalesce))
            for kind, cap in (("slt", a.max_slt), ("ffmpeg", a.max_ffmpeg)):
                if n <= cap:
                    runs[kind].append(run_peers(kind, n, a.secs, a.source))
        c = medians(runs["cp"])
        row += [f"{c[0]:.1f}", f"{c[1]:.0f}", f"{c[2]:.2f}", f"{c[3]:.2f}"]
        for kind, cap in (("slt", a.max_slt), ("ffmpeg", a.max_ffmpeg)):
            if n > cap:
                row += ["skipped (N > %d)" % cap, "", "", ""]
                continue
            p = medians(runs[kind])
            row += [f"{p[0]:.1f}", f"{p[1]:.0f}", f"{p[2]:.2f}", f"{p[3]:.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    srt_table(a)


def medians(results):
    """Per-column medians of (cpu, rss, p50, p99, samples) tuples."""
    cols = list(zip(*results))
    return tuple(sorted(c)[len(c) // 2] for c in cols)


def srt_table(a):
    if not a.srt_n:
        return
    print()
    print(f"SRT outputs (latency {SRT_LATENCY_MS} ms; callers' CPU not counted):")
    print()
    print("| N callers | castpoint (1 SRT listener output) CPU % | per caller | RSS MiB | p50 ms | p99 ms | srt-live-transmit relays x N CPU % | per relay | RSS MiB | p50 ms | p99 ms | castpoint / srt-live-transmit per output |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in a.srt_n.split(",")]:
        print(f"SRT N={n} ...", file=sys.stderr, flush=True)
        cs, ps = [], []
        for _ in range(a.reps):
            cs.append(run_castpoint_srt(a.bin, n, a.secs, a.source))
            ps.append(run_slt_srt(n, a.secs, a.source))
        c, p = medians(cs), medians(ps)
        if a.reps > 1:
            print(f"SRT N={n}: castpoint CPU {[round(x[0], 2) for x in cs]}, "
                  f"srt-live-transmit {[round(x[0], 2) for x in ps]}", file=sys.stderr, flush=True)
        ratio = (c[0] / n) / (p[0] / n) if p[0] > 0 else float("nan")
        print(f"| {n} | {c[0]:.1f} | {c[0] / n:.2f} | {c[1]:.0f} | {c[2]:.2f} | {c[3]:.2f} "
              f"| {p[0]:.1f} | {p[0] / n:.2f} | {p[1]:.0f} | {p[2]:.2f} | {p[3]:.2f} | {ratio:.2f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
