#!/usr/bin/env python3
"""RTMP ingest benchmark: castpoint's native RTMP -> UDP (MPEG-TS) remux vs a plain
`ffmpeg -listen 1 -i rtmp://... -c copy -f mpegts udp://...` doing the same, same run.

One ~5 Mbit/s FLV (720p25 H.264 without B-frames + AAC) is published in real time by
a small Python RTMP publisher that stamps the wall-clock send time of every video tag;
a UDP receiver stamps the arrival of every video PES and matches it by timestamp, so
latency = arrival - send (the whole remux path: TCP, RTMP parse, mux, UDP). CPU is
the server process's utime+stime over the publishing interval. Prints Markdown.
"""
import argparse
import os
import pathlib
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from procstat import cpu_s, rss_mib  # noqa: E402  (bench/lib is not a package)


# ---------------------------------------------------------------- RTMP publisher

def amf_str(s):
    b = s.encode()
    return b"\x02" + struct.pack(">H", len(b)) + b


def amf_num(n):
    return b"\x00" + struct.pack(">d", n)


def amf_obj(kv):
    out = b"\x03"
    for k, v in kv.items():
        kb = k.encode()
        out += struct.pack(">H", len(kb)) + kb
        out += amf_str(v) if isinstance(v, str) else amf_num(v)
    return out + b"\x00\x00\x09"


class Publisher:
    def __init__(self, host, port, app, key):
        deadline = time.monotonic() + 10
        while True:
            try:
                self.s = socket.create_connection((host, port))
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.chunk = 128
        c1 = struct.pack(">II", 0, 0) + os.urandom(1528)
        self.s.sendall(b"\x03" + c1)
        s0s1s2 = self._read(1 + 1536 * 2)
        self.s.sendall(s0s1s2[1:1537])
        # Drain whatever the server says (replies, acks) in the background.
        threading.Thread(target=self._drain, daemon=True).start()
        tc = f"rtmp://{host}:{port}/{app}"
        self.send(3, 20, 0, 0, amf_str("connect") + amf_num(1) +
                  amf_obj({"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0",
                           "tcUrl": tc}))
        self.send(2, 1, 0, 0, struct.pack(">I", 65536))
        self.chunk = 65536
        self.send(3, 20, 0, 0, amf_str("releaseStream") + amf_num(2) + b"\x05" + amf_str(key))
        self.send(3, 20, 0, 0, amf_str("FCPublish") + amf_num(3) + b"\x05" + amf_str(key))
        self.send(3, 20, 0, 0, amf_str("createStream") + amf_num(4) + b"\x05")
        time.sleep(0.3)
        self.send(8, 20, 1, 0, amf_str("publish") + amf_num(5) + b"\x05" + amf_str(key) +
                  amf_str("live"))
        time.sleep(0.3)

    def _read(self, n):
        b = b""
        while len(b) < n:
            x = self.s.recv(n - len(b))
            if not x:
                raise RuntimeError("server closed during handshake")
            b += x
        return b

    def _drain(self):
        try:
            while self.s.recv(65536):
                pass
        except OSError:
            pass

    def send(self, csid, mtype, sid, ts, payload):
        hdr = bytes([csid]) + (ts & 0xFFFFFF).to_bytes(3, "big") + \
            len(payload).to_bytes(3, "big") + bytes([mtype]) + struct.pack("<I", sid)
        out = [hdr]
        for i in range(0, len(payload), self.chunk):
            if i:
                out.append(bytes([0xC0 | csid]))
            out.append(payload[i:i + self.chunk])
        self.s.sendall(b"".join(out))

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


UUID = bytes.fromhex("c0a57b01d5e84d3a9d6e0b9e7a1c2f55")


def seq_bytes(seq):
    # 7 bits per byte with the top bit set: never 00 00 0x, so no
    # emulation-prevention bytes can appear and the stamp reads back as is.
    return bytes([0x80 | ((seq >> s) & 0x7F) for s in (21, 14, 7, 0)])


def sei_stamp(seq):
    """An SEI NAL (user_data_unregistered) carrying UUID + sequence number; both
    servers copy it through untouched, so every frame is identified exactly."""
    payload = UUID + seq_bytes(seq)
    return bytes([0x06, 5, len(payload)]) + payload + b"\x80"


def flv_tags(path):
    d = pathlib.Path(path).read_bytes()
    i = 9 + 4
    while i + 11 <= len(d):
        t = d[i]
        size = int.from_bytes(d[i + 1:i + 4], "big")
        ts = int.from_bytes(d[i + 4:i + 7], "big") | (d[i + 7] << 24)
        body = d[i + 11:i + 11 + size]
        yield t, ts, body
        i += 11 + size + 4


def publish(host, port, key, flv, secs, sent):
    p = Publisher(host, port, "live", key)
    t0 = time.monotonic()
    for t, ts, body in flv_tags(flv):
        if ts / 1000 > secs:
            break
        due = t0 + ts / 1000
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if t == 18:
            p.send(4, 18, 1, 0, amf_str("@setDataFrame") + body)
        elif t in (8, 9):
            if t == 9 and body[1:2] == b"\x01":
                seq = len(sent)
                sei = sei_stamp(seq)
                body = body[:5] + struct.pack(">I", len(sei)) + sei + body[5:]
                sent[seq] = time.monotonic()
            p.send(4 if t == 8 else 6, t, 1, ts, body)
    time.sleep(0.5)
    p.close()


# ---------------------------------------------------------------- receiver

class Receiver:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.frames = {}  # seq -> arrival of the frame's first packet
        self.pes = 0
        self.bytes = 0
        self.cc = {}
        self.cc_errors = 0
        self.video_pid = None
        self.cur = None  # [arrival, bytearray] of the video PES being read
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def finish(self):
        if self.cur is None:
            return
        at, buf = self.cur
        self.cur = None
        i = buf.find(UUID)
        if i >= 0 and i + 20 <= len(buf):
            b = buf[i + 16:i + 20]
            seq = (b[0] & 0x7F) << 21 | (b[1] & 0x7F) << 14 | (b[2] & 0x7F) << 7 | (b[3] & 0x7F)
            self.frames.setdefault(seq, at)

    def run(self):
        while not self.stop:
            try:
                dg = self.sock.recv(65536)
            except socket.timeout:
                continue
            now = time.monotonic()
            self.bytes += len(dg)
            for o in range(0, len(dg) - 187, 188):
                p = dg[o:o + 188]
                if p[0] != 0x47:
                    continue
                pid = ((p[1] & 0x1F) << 8) | p[2]
                afc = (p[3] >> 4) & 3
                if not afc & 1 or pid == 0x1FFF:
                    continue
                cc = p[3] & 15
                last = self.cc.get(pid)
                if last is not None and cc not in (last, (last + 1) & 15):
                    self.cc_errors += 1
                self.cc[pid] = cc
                off = 4 + (1 + p[4] if afc & 2 else 0)
                payload = p[off:]
                if p[1] & 0x40:
                    if payload[:4] == b"\x00\x00\x01\xe0":
                        self.video_pid = pid
                        self.finish()
                        self.pes += 1
                        self.cur = [now, bytearray(payload)]
                elif pid == self.video_pid and self.cur is not None and len(self.cur[1]) < 1500:
                    self.cur[1] += payload

    def close(self):
        self.stop = True
        self.t.join()
        self.finish()
        self.sock.close()


def latencies(frames, sent, skip):
    """Per-frame latency in ms (frames with sequence >= skip)."""
    return [(frames[k] - sent[k]) * 1000 for k in sorted(frames) if k in sent and k >= skip]


def pct(v, q):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def run_case(name, start, flv, secs):
    rx = Receiver()
    proc, port = start(rx.port)
    try:
        time.sleep(1.0)
        idle0 = cpu_s(proc.pid)
        time.sleep(2.0)
        idle = (cpu_s(proc.pid) - idle0) / 2.0 * 100
        sent = {}
        c0, w0 = cpu_s(proc.pid), time.monotonic()
        publish("127.0.0.1", port, "bench", flv, secs, sent)
        cpu = (cpu_s(proc.pid) - c0) / (time.monotonic() - w0) * 100
        rss = rss_mib(proc.pid)
        time.sleep(0.5)
    finally:
        rx.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    # Steady state: skip the first 2 s (50 frames): ffmpeg probes its input
    # before writing anything, and that start-up delay is reported separately.
    steady = latencies(rx.frames, sent, 50)
    return {
        "name": name, "cpu": cpu, "idle": idle, "rss": rss,
        "mbit": rx.bytes * 8 / secs / 1e6, "frames": len(rx.frames), "sent": len(sent),
        "p50": pct(steady, 0.5), "p99": pct(steady, 0.99), "first": (min(rx.frames.values()) - sent[0]) * 1000 if rx.frames and 0 in sent
        else float("nan"),
        "cc": rx.cc_errors,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--flv", required=True)
    ap.add_argument("--secs", type=float, default=15)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="castpoint-bench-rtmp-")

    def castpoint(udp_port):
        cfg = pathlib.Path(tmp) / "rtmp.toml"
        cfg.write_text(
            "[telemetry]\nenabled = false\n[bacnet]\nenabled = false\n[modbus]\nenabled = false\n"
            "[[route]]\nname = \"obs\"\n[[route.input]]\ntype = \"rtmp\"\nkey = \"bench\"\n"
            f"[[route.output]]\ntype = \"udp\"\ndest = \"127.0.0.1:{udp_port}\"\n")
        p = subprocess.Popen([a.bin, "run", "--config", str(cfg), "--http", "127.0.0.1:0",
                              "--rtmp", "127.0.0.1:0", "--data-dir", tmp],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        port = None
        for line in p.stdout:
            parts = line.split()
            if parts[:2] == ["listening", "rtmp"]:
                port = int(parts[2].rsplit(":", 1)[1])
            if parts == ["ready"]:
                break
        if port is None:
            raise RuntimeError("castpoint printed no rtmp listener")
        return p, port

    def ffmpeg(udp_port):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        p = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-listen", "1",
                              "-fflags", "nobuffer", "-i", f"rtmp://127.0.0.1:{port}/live/bench",
                              "-c", "copy", "-f", "mpegts",
                              f"udp://127.0.0.1:{udp_port}?pkt_size=1316"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # No probe connection: ffmpeg -listen serves exactly one client.
        # The publisher retries while the socket is not open yet.
        return p, port

    rows = [run_case("castpoint (native RTMP -> TS -> UDP)", castpoint, a.flv, a.secs),
            run_case("ffmpeg -listen 1 -c copy -f mpegts udp://", ffmpeg, a.flv, a.secs)]
    print(f"RTMP ingest remux, ~5 Mbit/s 720p25 H.264 + AAC, {a.secs:.0f} s publish, "
          "same run, loopback\n")
    print("| server | CPU % (publishing) | CPU % idle | RSS MiB | out Mbit/s | video frames out/sent "
          "| latency p50 ms | p99 ms | first output after publish ms | CC errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['cpu']:.1f} | {r['idle']:.1f} | {r['rss']:.0f} | {r['mbit']:.2f} "
              f"| {r['frames']}/{r['sent']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['first']:.0f} "
              f"| {r['cc']} |")
    c, f = rows
    if f["cpu"] > 0:
        print(f"\nCPU ratio castpoint/ffmpeg: {c['cpu'] / f['cpu']:.2f}; "
              f"p50 latency ratio: {c['p50'] / f['p50']:.2f}" if f["p50"] > 0 else "")


if __name__ == "__main__":
    sys.exit(main())
