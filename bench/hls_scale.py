#!/usr/bin/env python3
"""Many-routes benchmark (issue 25): N routes, each a built-in generator input at a set bit rate feeding 2 UDP outputs, 1 HTTP-TS and 1 HLS output; prints ready time, RSS, process CPU and whole-machine CPU (softirq counted apart), HLS correctness (ffprobe on a playlist) and p50/p99 of REST (with http.client and with a raw-socket client), Modbus and BACnet answers under that load.

Usage: python3 bench/hls_scale.py [--routes 500] [--bitrate 1500000] [--seconds 20]
                                  [--store disk|memory] [--coalesce 20ms] [--default-coalesce 20ms]
                                  [--baseline] [--bin PATH]
                                  [--data-root DIR] [--client-nice -10] [--outputs udp,udp,http,hls]

The input is castpoint's in-process generator (`type = "generator"`: the
simulators' CBR H.264+AAC TS, paced in real time), because 500 external
UDP sources at 1.5 Mbit/s (71,000 datagrams/s) cannot be produced on this
2-core machine beside castpoint; its cost is inside castpoint's CPU figure.
`--baseline` runs the same routes with no outputs in the same invocation, so
the outputs' share can be read off. UDP outputs go to bound, unread
sockets of this script (the kernel accepts and drops, as a real receiver
costs the sender). Nothing leaves 127.0.0.1.

Whole-machine CPU comes from /proc/stat over the same window: on this
shared machine it includes other processes; softirq (where the kernel does
most loopback UDP work) is shown apart.
"""
import argparse
import http.client
import json
import multiprocessing
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "lib"))
import launch  # noqa: E402  (bench/lib is not a package)
CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def machine():
    """(busy, softirq, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    total = sum(v[:8])
    return total - idle - iowait, softirq, total


def config(n, bitrate, store, sinks, outputs=True, kinds=("udp", "udp", "http", "hls"), coalesce=None,
           default_coalesce=None):
    c = ['[http]', 'bind = "127.0.0.1:0"', '[bacnet]', 'bind = "127.0.0.1:0"',
         '[modbus]', 'bind = "127.0.0.1:0"', '[rtmp]', 'enabled = false', '']
    if default_coalesce:
        c += ['[route_defaults]', f'udp_coalesce = "{default_coalesce}"', '']
    for i in range(n):
        c += ['[[route]]', f'name = "r{i}"']
        if coalesce:
            c.append(f'udp_coalesce = "{coalesce}"')
        c += ['[[route.input]]', 'type = "generator"', f'bitrate = {bitrate}']
        if outputs:
            for k in range(kinds.count("udp")):
                host, port = sinks[2 * i + k].getsockname()
                c += ['[[route.output]]', f'name = "u{k}"', 'type = "udp"',
                      f'dest = "{host}:{port}"']
            if "http" in kinds:
                c += ['[[route.output]]', 'name = "ts"', 'type = "http"', f'path = "r{i}"']
            if "hls" in kinds:
                c += ['[[route.output]]', 'name = "hls"', 'type = "hls"', f'path = "r{i}"',
                      f'store = "{store}"']
        c.append('')
    return "\n".join(c)


def start(binary, text, root=None):
    d = tempfile.mkdtemp(prefix="castpoint-hls-scale-", dir=root)
    cfg = os.path.join(d, "castpoint.toml")
    open(cfg, "w").write(text)
    p, addrs, ready = launch.start(binary, cfg, os.path.join(d, "data"))
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, addrs, ready


def hostport(a):
    h, p = a.rsplit(":", 1)
    return h, int(p)


class Poller:
    """One client of one protocol in its own process (so the three never
    wait for one another on Python's GIL), a request every `every` s;
    `lat` holds the latencies in ms once `finish` returned. `nice` sets the
    client's CPU priority (negative needs root): with castpoint saturating
    both cores, a client at the default priority also measures its own wait
    for a CPU, which a BMS on another machine never adds."""

    def __init__(self, name, make_fn, nice=0, every=0.02):
        self.name, self.lat, self.errors = name, [], 0
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._rx, tx = ctx.Pipe(duplex=False)
        self._p = ctx.Process(target=self._loop, args=(make_fn, nice, every, tx), daemon=True)

    def _loop(self, make_fn, nice, every, tx):
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        fn, lat, errors = make_fn(), [], 0
        nxt = time.perf_counter()
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                fn()
                lat.append((time.perf_counter() - t) * 1000)
            except Exception:
                errors += 1
            nxt += every
            time.sleep(max(0, nxt - time.perf_counter()))
        tx.send((lat, errors))

    def start(self):
        self._p.start()

    def finish(self):
        self._stop.set()
        self.lat, self.errors = self._rx.recv()
        self._p.join()


def rest_fn(addr):
    h, p = hostport(addr)
    conn = [http.client.HTTPConnection(h, p, timeout=2)]

    def f():
        try:
            conn[0].request("GET", "/api/points/cpu_usage")
            r = conn[0].getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(r.status)
        except (OSError, http.client.HTTPException):
            conn[0] = http.client.HTTPConnection(h, p, timeout=2)
            raise
    return f


def rest_raw_fn(addr):
    """The same GET as `rest_fn` with the least client work: one prebuilt
    request, the answer read up to its Content-Length. http.client parses
    headers in Python on every call, so under a saturated machine its
    answer times also hold the client's own CPU wait; the Modbus and BACnet
    clients here are this lean, and this one compares with them."""
    h, p = hostport(addr)
    s = socket.create_connection((h, p), timeout=2)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"GET /api/points/cpu_usage HTTP/1.1\r\nHost: {h}:{p}\r\n\r\n".encode()

    def f():
        s.sendall(req)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                raise RuntimeError("closed")
            got += b
            head, sep, body = got.partition(b"\r\n\r\n")
            if not sep:
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:40])
            n = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")), None)
            if n is None:
                raise RuntimeError("no content-length")
            if len(body) >= n:
                return
    return f


def modbus_fn(addr):
    s = socket.create_connection(hostport(addr), timeout=2)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tid = [0]

    def f():
        tid[0] = (tid[0] + 1) & 0xFFFF
        # FC04, input registers 30001..30010.
        s.sendall(struct.pack(">HHHBBHH", tid[0], 0, 6, 1, 4, 0, 10))
        got = b""
        while len(got) < 9 + 20:
            b = s.recv(256)
            if not b:
                raise RuntimeError("closed")
            got += b
        if got[7] != 4:
            raise RuntimeError("exception")
    return f


def bacnet_fn(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    dest = hostport(addr)
    inv = [0]

    def f():
        inv[0] = (inv[0] + 1) & 0xFF
        # ReadProperty analog-input 0 present-value.
        apdu = bytes([0x00, 0x05, inv[0], 0x0C, 0x0C]) + struct.pack(">I", 0) + b"\x19\x55"
        npdu = bytes([0x01, 0x04]) + apdu
        s.sendto(bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu, dest)
        while True:
            d = s.recv(1500)
            if len(d) > 7 and d[7] == inv[0]:
                if d[6] >> 4 != 3:
                    raise RuntimeError("not a complex ack")
                return
    return f


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def hls_check(http_addr, n):
    """ffprobe reads a playlist and its segments; a few others serve a segment."""
    url = f"http://{http_addr}/hls/r{n // 2}/index.m3u8"
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                        "-of", "csv=p=0", url], capture_output=True, text=True, timeout=30)
    codecs = ",".join(sorted(set(r.stdout.split())))
    ok = r.returncode == 0 and "h264" in codecs
    h, p = hostport(http_addr)
    served = 0
    for i in range(0, n, max(1, n // 10)):
        c = http.client.HTTPConnection(h, p, timeout=5)
        c.request("GET", f"/hls/r{i}/index.m3u8")
        body = c.getresponse().read().decode(errors="replace")
        names = [x for x in body.splitlines() if x and not x.startswith("#")]
        if names:
            c.request("GET", f"/hls/r{i}/{names[-1]}")
            seg = c.getresponse().read()
            served += len(seg) > 376 and seg[0] == 0x47
    return ok, codecs or r.stderr.strip()[:80], served


def run(a, outputs=True):
    sinks = []
    if outputs:
        for _ in range(2 * a.routes):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            sinks.append(s)
    p, addrs, ready = start(a.bin, config(a.routes, a.bitrate, a.store, sinks, outputs,
                                          tuple(a.outputs.split(",")), a.coalesce, a.default_coalesce),
                             a.data_root)
    try:
        # Settle: every HLS output has had time to cut a segment.
        time.sleep(a.settle)
        pollers = []
        if outputs:
            pollers = [Poller("REST (http.client)", lambda: rest_fn(addrs["http"]), a.client_nice),
                       Poller("REST (raw socket client)", lambda: rest_raw_fn(addrs["http"]),
                              a.client_nice),
                       Poller("Modbus", lambda: modbus_fn(addrs["modbus"]), a.client_nice),
                       Poller("BACnet", lambda: bacnet_fn(addrs["bacnet"]), a.client_nice)]
        for q in pollers:
            q.start()
        c0, m0, w0 = proc_cpu_s(p.pid), machine(), time.perf_counter()
        time.sleep(a.seconds)
        c1, m1, w1 = proc_cpu_s(p.pid), machine(), time.perf_counter()
        for q in pollers:
            q.finish()
        rss, hwm = status_kib(p.pid, "VmRSS") / 1024, status_kib(p.pid, "VmHWM") / 1024
        hls = hls_check(addrs["http"], a.routes) if outputs and "hls" in a.outputs else None
        ncpu = os.cpu_count()
        busy = (m1[0] - m0[0]) / (m1[2] - m0[2]) * 100 * ncpu
        soft = (m1[1] - m0[1]) / (m1[2] - m0[2]) * 100 * ncpu
        return {
            "ready_s": ready, "rss_mib": rss, "hwm_mib": hwm,
            "threads": status_kib(p.pid, "Threads"),
            "cpu_pct": (c1 - c0) / (w1 - w0) * 100,
            "machine_busy_pct": busy, "machine_softirq_pct": soft,
            "polls": {q.name: (len(q.lat), q.errors, pct(q.lat, 0.5), pct(q.lat, 0.99))
                      for q in pollers},
            "hls": hls,
            "data_dir_mib": du_mib(p.pid),
        }
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def filesystem(path):
    """What the data directory sits on, e.g. "ext4 on /dev/vda, no journal":
    creating and deleting 250 segment files a second costs the writer far
    more on an ext4 without a journal (its inode allocator then skips every
    recently deleted inode, one inode-table lookup each)."""
    try:
        src, fstype = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", path],
                                     capture_output=True, text=True, timeout=5).stdout.split()[:2]
    except (OSError, ValueError, subprocess.SubprocessError):
        return "unknown filesystem"
    desc = f"{fstype} on {src}"
    if fstype == "ext4":
        try:
            task = open(f"/sys/fs/ext4/{os.path.basename(src)}/journal_task").read().strip()
            desc += ", no journal" if task == "<none>" else ", journaled"
        except OSError:
            pass
    return desc


def du_mib(pid):
    """Size of the HLS files under the data dir (from the process's cwd-free
    command line)."""
    try:
        cmd = open(f"/proc/{pid}/cmdline").read().split("\0")
        d = pathlib.Path(cmd[cmd.index("--data-dir") + 1]) / "hls"
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
    except (OSError, ValueError):
        return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=500)
    ap.add_argument("--bitrate", type=int, default=1_500_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--settle", type=float, default=8)
    ap.add_argument("--store", default="disk", choices=["disk", "memory"])
    ap.add_argument("--outputs", default="udp,udp,http,hls",
                    help="each route's outputs (to attribute memory or CPU to one kind)")
    ap.add_argument("--coalesce", help="every route's udp_coalesce (default: not set, i.e. auto); "
                    "the generator input then reads at the route's pace, as a UDP input does")
    ap.add_argument("--default-coalesce", help="udp_coalesce written once, in [route_defaults], "
                    "for every route that does not write its own (--coalesce does)")
    ap.add_argument("--baseline", action="store_true",
                    help="also run the same routes without outputs")
    ap.add_argument("--client-nice", type=int, default=0,
                    help="CPU priority of the protocol clients (e.g. -10, as root): their answer "
                    "times then leave out the clients' own wait for a CPU on this saturated machine")
    ap.add_argument("--bin", default=str(ROOT / "target/release/castpoint"))
    ap.add_argument("--data-root", help="where the data directory (HLS segments) is made "
                    "(default: the temporary directory); the filesystem is printed")
    a = ap.parse_args()
    load = os.getloadavg()
    rows = [(f"routes x ({a.outputs})", run(a))]
    if a.baseline:
        rows.append(("routes, generator only (no outputs)", run(a, outputs=False)))
    print(f"{a.routes} routes at {a.bitrate / 1e6:.1f} Mbit/s, HLS store {a.store}, "
          f"udp_coalesce {a.coalesce or 'not set on the routes'}, "
          f"[route_defaults] udp_coalesce {a.default_coalesce or 'not set (auto)'}, "
          f"{a.seconds:.0f} s window, protocol clients at nice {a.client_nice}; load average before {load[0]:.1f} {load[1]:.1f}, "
          f"after {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores; data directory on "
          f"{filesystem(a.data_root or tempfile.gettempdir())}")
    print()
    print("| run | ready s | RSS MiB | peak RSS MiB | castpoint CPU % of a core | machine busy % of a core (all processes) | of it softirq | HLS files MiB | threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['ready_s']:.2f} | {r['rss_mib']:.0f} | {r['hwm_mib']:.0f} | "
              f"{r['cpu_pct']:.0f} | {r['machine_busy_pct']:.0f} | {r['machine_softirq_pct']:.0f} | "
              f"{r['data_dir_mib']:.0f} | {r['threads']} |")
    r = rows[0][1]
    print()
    print("| protocol (1 client each, 50 req/s) | requests | errors | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for k, (n, e, p50, p99) in r["polls"].items():
        print(f"| {k} | {n} | {e} | {p50:.2f} | {p99:.2f} |")
    if r["hls"] is None:
        return
    ok, codecs, served = r["hls"]
    print()
    print(f"HLS: ffprobe on a playlist {'ok' if ok else 'FAILED'} ({codecs}); "
          f"{served} of {len(range(0, a.routes, max(1, a.routes // 10)))} sampled routes served a segment")
    print(json.dumps({k: v for k, v in r.items()}, default=str), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
