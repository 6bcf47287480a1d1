#!/usr/bin/env python3
"""Transcode benchmark: one 10 Mbit/s 720p25 TS over UDP into castpoint's transcode mode (UDP out) and into a plain ffmpeg doing the same conversion (same encoder arguments, UDP in -> UDP out), per profile; prints a Markdown table of CPU % of one core and added latency (p50/p99).

Latency is matched by video PTS: both castpoint (-copyts, no mux delay)
and the plain ffmpeg keep input timestamps, so the wall time between the
source sending the PES of frame PTS p and the receiver getting the PES of
output frame PTS p is the conversion's added latency."""
import argparse
import bisect
import os
import socket
import subprocess
import tempfile
import threading
import time

DG = 1316
RATE = 10_000_000
TICK = os.sysconf("SC_CLK_TCK")
VIDEO_PID = 0x100  # ffmpeg's first elementary stream, in and out

PROFILES = [
    # name, width, height, bitrate, preset
    ("720p", 1280, 720, 3_000_000, "ultrafast"),
    ("360p", 640, 360, 1_000_000, "ultrafast"),
]


def pes_pts(p):
    """PTS of a video PES starting in this 188-byte packet, else None."""
    pid = ((p[1] & 0x1F) << 8) | p[2]
    if pid != VIDEO_PID or not p[1] & 0x40 or not p[3] & 0x10:
        return None
    off = 4
    if p[3] & 0x20:
        off += 1 + p[4]
    pl = p[off:]
    if len(pl) < 14 or pl[0:3] != b"\x00\x00\x01" or not pl[7] & 0x80:
        return None
    b = pl[9:14]
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def cpu_ticks(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            t += int(parts[11]) + int(parts[12])
        except OSError:
            pass
    return t


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Source:
    def __init__(self, path, dest):
        data = open(path, "rb").read()
        self.dgs = [data[i * DG:(i + 1) * DG] for i in range(len(data) // DG)]
        self.dest = dest
        self.sent = {}
        self.keys = []
        self.stop = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        # The file (20 s) loops and its PTS repeat: runs stay inside the
        # first pass (3 s warm-up + --secs, keep it under 17).
        period = DG * 8 / RATE
        start = time.perf_counter()
        i = 0
        while not self.stop:
            dg = self.dgs[i % len(self.dgs)]
            now = time.perf_counter()
            for k in range(0, DG, 188):
                pts = pes_pts(dg[k:k + 188])
                if pts is not None and pts not in self.sent:
                    self.sent[pts] = now
                    bisect.insort(self.keys, pts)
            self.sock.sendto(dg, self.dest)
            i += 1
            wait = start + i * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)


class Probe:
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
            for k in range(0, len(dg) - 187, 188):
                pts = pes_pts(dg[k:k + 188])
                if pts is None:
                    continue
                # Output PTS are the input's snapped to the output frame
                # grid (nearest frame): match the nearest input frame.
                keys = self.src.keys
                i = bisect.bisect_left(keys, pts)
                near = [keys[j] for j in (i - 1, i) if 0 <= j < len(keys)]
                best = min(near, key=lambda k: abs(k - pts), default=None)
                t0 = self.src.sent.get(best) if best is not None and abs(best - pts) <= 9000 else None
                if self.on and t0 is not None:
                    self.lat.append((now - t0) * 1000)


def measure(pids_fn, probe, secs):
    time.sleep(3)  # warm-up: child start, probe, first GOP
    pids = pids_fn()
    probe.on = True
    c0, t0 = cpu_ticks(pids), time.time()
    time.sleep(secs)
    c1, t1 = cpu_ticks(pids), time.time()
    probe.on = False
    cpu = (c1 - c0) / TICK / (t1 - t0) * 100
    lat = sorted(probe.lat)
    q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] if lat else float("nan")
    return cpu, q(0.5), q(0.99), len(lat)


def encoder_args(w, h, b, preset):
    # The same encoder arguments castpoint's profile builds (see
    # src/media/ffmpeg/profile.rs), audio re-encoded to AAC 128k.
    return ["-filter_complex", f"[0:v:0]scale={w}:{h}[v]", "-map", "[v]", "-map", "0:a:0?",
            "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency",
            "-b:v", str(b), "-maxrate", str(b), "-bufsize", str(2 * b),
            "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128000",
            "-muxdelay", "0", "-muxpreload", "0", "-flush_packets", "1"]


def run_castpoint(binary, prof, secs, src_file):
    name, w, h, b, preset = prof
    inport = free_port()
    src = Source(src_file, ("127.0.0.1", inport))
    probe = Probe(src)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[http]\nbind = "127.0.0.1:0"\n[bacnet]\nenabled = false\n[modbus]\nenabled = false\n')
    cfg.write(f'[[profile]]\nnumber = 1\nname = "{name}"\nwidth = {w}\nheight = {h}\n'
              f'bitrate = {b}\ngop = 50\npreset = "{preset}"\nencoder = "software"\n')
    cfg.write(f'[[route]]\nname = "bench"\nmode = "transcode"\n[[route.input]]\ntype = "udp"\n'
              f'bind = "127.0.0.1:{inport}"\n[[route.output]]\nname = "o"\ntype = "udp"\n'
              f'dest = "{probe.addr[0]}:{probe.addr[1]}"\n')
    cfg.close()
    data = tempfile.mkdtemp()
    proc = subprocess.Popen([binary, "run", "--config", cfg.name, "--data-dir", data],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("castpoint exited before it was ready")
        if line.strip() == "ready":
            break
    probe.t.start()
    src.t.start()
    r = measure(lambda: [proc.pid] + children(proc.pid), probe, secs)
    src.stop = probe.stop = True
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    os.unlink(cfg.name)
    return r


def run_ffmpeg(prof, secs, src_file):
    name, w, h, b, preset = prof
    port = free_port()
    src = Source(src_file, ("127.0.0.1", port))
    probe = Probe(src)
    cmd = (["ffmpeg", "-loglevel", "quiet", "-probesize", "1000000", "-analyzeduration", "1000000",
            "-copyts", "-f", "mpegts", "-i", f"udp://127.0.0.1:{port}?fifo_size=1000000"]
           + encoder_args(w, h, b, preset)
           + ["-f", "mpegts", f"udp://{probe.addr[0]}:{probe.addr[1]}?pkt_size=1316"])
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    probe.t.start()
    src.t.start()
    r = measure(lambda: [p.pid], probe, secs)
    src.stop = probe.stop = True
    p.terminate()
    try:
        p.wait(timeout=3)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--secs", type=float, default=8)
    a = ap.parse_args()
    rows = []
    for prof in PROFILES:
        rows.append((prof[0], "castpoint transcode", run_castpoint(a.bin, prof, a.secs, a.source)))
        rows.append((prof[0], "plain ffmpeg", run_ffmpeg(prof, a.secs, a.source)))
    print(f"\n### Transcode: 10 Mbit/s 720p25 H.264+AAC in, libx264 out ({a.secs:.0f} s per run)\n")
    print("| profile | system | CPU % of one core | added latency p50 ms | p99 ms | frames matched |")
    print("|---|---|---:|---:|---:|---:|")
    for prof, who, (cpu, p50, p99, n) in rows:
        print(f"| {prof} | {who} | {cpu:.0f} | {p50:.0f} | {p99:.0f} | {n} |")
    print("\n| profile | CPU ratio castpoint/ffmpeg | latency p50 difference ms |")
    print("|---|---:|---:|")
    for i in range(0, len(rows), 2):
        c, f = rows[i][2], rows[i + 1][2]
        ratio = c[0] / f[0] if f[0] else float("nan")
        print(f"| {rows[i][0]} | {ratio:.2f} | {c[1] - f[1]:+.0f} |")


if __name__ == "__main__":
    main()
