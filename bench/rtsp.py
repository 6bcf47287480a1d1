#!/usr/bin/env python3
"""RTSP pull benchmark: castpoint's native RTSP -> UDP (MPEG-TS) remux vs a plain
`ffmpeg -rtsp_transport tcp -i rtsp://... -c copy -f mpegts udp://...`, both pulling the
same simulated camera (castpoint-sim rtsp-camera) at the same time, same run.

The camera puts its wall-clock send time into an SEI message of every picture (tsgen's
stamp, UUID "castpoint-stamp!"); both relays keep SEI NAL units, so a UDP receiver that
finds the stamp in each video PES measures latency = arrival - camera send (RTSP over
TCP, depacketize, mux, UDP). CPU is each process's utime+stime over the measuring window
(castpoint's figure includes its idle server: protocols, HTTP, sampler). Prints Markdown.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from procstat import cpu_s, rss_mib  # noqa: E402  (bench/lib is not a package)
UUID = b"castpoint-stamp!"


def unescape(b):
    """H.264 emulation prevention: 00 00 03 -> 00 00."""
    out = bytearray()
    zeros = 0
    for x in b:
        if zeros >= 2 and x == 3:
            zeros = 0
            continue
        out.append(x)
        zeros = zeros + 1 if x == 0 else 0
    return bytes(out)


class Receiver(threading.Thread):
    """UDP MPEG-TS receiver: per-picture latency from SEI stamps, CC errors."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lat_ms = []
        self.cc = {}
        self.cc_errors = 0
        self.bytes = 0
        self.measuring = False
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            now_us = time.time_ns() // 1000
            self.bytes += len(d)
            for i in range(0, len(d) - 187, 188):
                p = d[i:i + 188]
                if p[0] != 0x47:
                    continue
                pid = ((p[1] & 0x1F) << 8) | p[2]
                if pid == 0x1FFF:
                    continue
                afc = (p[3] >> 4) & 3
                if afc & 1:
                    cc = p[3] & 0x0F
                    last = self.cc.get(pid)
                    if last is not None and cc not in (last, (last + 1) & 0x0F):
                        self.cc_errors += 1
                    self.cc[pid] = cc
                if not (p[1] & 0x40) or not (afc & 1):
                    continue
                k = p.find(UUID)
                if k < 0 or not self.measuring:
                    continue
                stamp = unescape(p[k + 16:])[:12]
                if len(stamp) == 12:
                    sent = int.from_bytes(stamp[:8], "big")
                    self.lat_ms.append((now_us - sent) / 1000)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/castpoint")
    ap.add_argument("--camera", default="target/release/rtsp-camera")
    ap.add_argument("--secs", type=int, default=15)
    ap.add_argument("--bitrate", default="4M")
    a = ap.parse_args()

    cam = subprocess.Popen([a.camera, "--bind", "127.0.0.1:0", "--bitrate", a.bitrate],
                           stdout=subprocess.PIPE, text=True)
    url = cam.stdout.readline().split()[1]
    rx_cp, rx_ff = Receiver(), Receiver()
    rx_cp.start()
    rx_ff.start()
    tmp = tempfile.mkdtemp(prefix="castpoint-bench-rtsp-")
    cfg = os.path.join(tmp, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f"""data_dir = "{tmp}"
[http]
bind = "127.0.0.1:0"
[bacnet]
enabled = false
[modbus]
enabled = false
[telemetry]
enabled = false
[[route]]
name = "cam"
[[route.input]]
type = "rtsp"
url = "{url}"
[[route.output]]
type = "udp"
dest = "127.0.0.1:{rx_cp.port}"
""")
    cp = subprocess.Popen([a.bin, "run", "--config", cfg, "--rtmp", "127.0.0.1:0"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    ff = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", url,
                           "-c", "copy", "-f", "mpegts",
                           f"udp://127.0.0.1:{rx_ff.port}?pkt_size=1316"],
                          stdin=subprocess.DEVNULL)
    try:
        time.sleep(4)  # connect, first keyframe, steady state
        for r in (rx_cp, rx_ff):
            r.measuring = True
        c0 = {p.pid: cpu_s(p.pid) for p in (cp, ff)}
        cam0 = cpu_s(cam.pid)
        t0 = time.monotonic()
        time.sleep(a.secs)
        dt = time.monotonic() - t0
        cpu = {p.pid: (cpu_s(p.pid) - c0[p.pid]) / dt * 100 for p in (cp, ff)}
        rss = {p.pid: rss_mib(p.pid) for p in (cp, ff)}
        cam_cpu = (cpu_s(cam.pid) - cam0) / dt * 100
        for r in (rx_cp, rx_ff):
            r.measuring = False
    finally:
        for p in (cp, ff, cam):
            p.terminate()
        for p in (cp, ff, cam):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for r in (rx_cp, rx_ff):
            r.stop = True

    rows = [("castpoint (native RTSP -> TS)", cp, rx_cp), ("ffmpeg -c copy", ff, rx_ff)]
    print(f"RTSP pull, simulated camera {a.bitrate}bit/s H.264 640x360p25 + AAC over TCP, "
          f"{a.secs} s window, both pulling at once; camera itself {cam_cpu:.1f}% CPU\n")
    print("| relay | CPU % | RSS MiB | pictures | latency p50 ms | p95 ms | max ms | CC errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, p, r in rows:
        lat = r.lat_ms
        print(f"| {name} | {cpu[p.pid]:.1f} | {rss[p.pid]:.0f} | {len(lat)} | "
              f"{pct(lat, .5):.1f} | {pct(lat, .95):.1f} | "
              f"{(max(lat) if lat else float('nan')):.1f} | {r.cc_errors} |")
    if rx_cp.lat_ms and rx_ff.lat_ms and cpu[ff.pid] > 0:
        print(f"\nCPU ratio castpoint/ffmpeg: {cpu[cp.pid] / cpu[ff.pid]:.2f}; "
              f"p50 latency ratio: {pct(rx_cp.lat_ms, .5) / max(pct(rx_ff.lat_ms, .5), 1e-3):.2f}")
    if not rx_cp.lat_ms or not rx_ff.lat_ms:
        print("\nA relay delivered no stamped pictures: see its stderr.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
