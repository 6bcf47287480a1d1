#!/usr/bin/env python3
"""BACnet ReadPropertyMultiple ALL under concurrency: castpoint vs bacnet-stack's demo server `bacserv`, in the same run, for three request shapes: 4 objects (unsegmented), one route block, the whole device (both segmented) (issue 25 item 2).

Usage: python3 bench/bacnet_rpm_peer.py [--shape four|block|device] [--seconds 5]
           [--window 1,8] [--rounds 2] [--clients 2] [--check]
           [--bin target/release/castpoint] [--bacserv PATH]
           [--before OLD_CASTPOINT] [--reuse-ids]

`bacserv` is not built here: build it by hand from a bacnet-stack snapshot
outside this repository (bench/README.md, *BACnet RPM vs bacnet-stack*), and
pass its path (or set BACSERV; BACSERV_SEG for the segmented shapes, whose
default is /tmp/bacnet-stack-seg/bin/bacserv: a bacserv that segments its
answers). Without it the castpoint rows are printed alone.

Shapes (`--shape`):
- `four` (default): one unsegmented confirmed ReadPropertyMultiple of
  property ALL of analog-input 1, analog-value 1, binary-output 1 and
  multi-state-value 1 (instance 1 exists in both: castpoint's map and the
  objects bacserv creates at start-up); the same bytes for both servers.
- `block`: RPM ALL of one castpoint route block (the default configuration's
  demo route: 31 objects, 12 multi-state-value, 7 analog-input, 11
  binary-output, 1 analog-value; found in the Object_List). bacserv creates
  one object of each type at start-up, so the script first creates the
  missing ones there with CreateObject (bacserv's own dynamic objects) and
  asks for the same number of objects of each type, in the block's order.
- `device`: RPM ALL of every object in each device's Object_List (castpoint:
  the seed points plus the demo route; bacserv: what it creates at
  start-up): the lists differ, so object counts, answer octets and CPU per
  object and per octet are printed.
The segmented shapes send segmented-response-accepted, max-segments-accepted
64 and max-APDU 1476, acknowledge every window of segments with the window
size the server proposed (Clause 5.4: the first segment at once, then each
`window`-th and the last), answer an out-of-order segment with a negative
SegmentACK, and count an Abort, Reject or Error as a bad answer (printed by
kind with its first bytes). A joined answer is decoded (the object
identifiers at its top level must be the ones asked, in order) when its
length is new in the cell, or every answer with `--check`.

The client is raw UDP in `--clients` processes (blocking sockets, no
asyncio), the window split among them, each with its own socket; an invoke
id still in flight on a socket is never reused (a reused one is a
retransmission to the server, Clause 5.4, and goes unanswered by design:
that was a client artefact, not a server loss). A request with no answer
datagram for 2 s is counted unanswered (of them: stalled after some
segments) and replaced. After a cell a segmented client finishes its
requests still in flight (not counted): left mid-answer, each would hold one
of the server's segmented transactions until its timeout (bacserv has 16).

Per cell: requests/s, p50/p99/max latency (request to last segment),
unanswered, answer octets (service data, segments joined) and segments per
answer, server process CPU (utime+stime from /proc/<pid>/stat, % of one core,
µs per request, ns per answer octet), the client's CPU (so a client-bound
cell shows), and whole-machine CPU from /proc/stat with softirq apart (the
machine is shared: other work shows there). Cells alternate between the
servers, `--rounds` times each, and their figures are pooled.
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


# --- Segmented shapes (block, device) ---

# Confirmed-request header of the segmented shapes: segmented-response-
# accepted, max-segments-accepted 64 (code 6), max-APDU 1476 (code 5).
SEG_HEADER = (0x02, 0x65)
SEG_TIMEOUT = 2.0  # seconds without an answer datagram: unanswered
PDU_KIND = {2: "SimpleACK", 4: "SegmentACK", 5: "Error", 6: "Reject", 7: "Abort"}


def bvlc(npdu):
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


def rpm_request(invoke, objects):
    """RPM ALL of `objects` [(type, instance)], segmented answer accepted."""
    d = bytearray([SEG_HEADER[0], SEG_HEADER[1], invoke, 14])
    for ty, inst in objects:
        d += b"\x0c" + struct.pack(">I", (ty << 22) | inst) + b"\x1e\x09\x08\x1f"
    return bvlc(b"\x01\x04" + bytes(d))


def segment_ack(invoke, seq, window, nak=False):
    return bvlc(bytes([0x01, 0x00, 0x40 | (0x02 if nak else 0), invoke, seq, window]))


def skip_tag(b, i):
    """Index after the BACnet tag (and its content) at b[i]; an opening tag
    skips to after its matching closing tag. IndexError/ValueError on bad
    encoding."""
    t = b[i]
    i += 1
    if t >> 4 == 0x0F:
        i += 1  # extended tag number
    lvt = t & 0x07
    if t & 0x08:
        if lvt == 6:  # opening: up to the matching closing tag, past it
            while (b[i] & 0x0F) != 0x0F:
                i = skip_tag(b, i)
            return i + (2 if b[i] >> 4 == 0x0F else 1)
        if lvt == 7:
            raise ValueError(f"unexpected closing tag at {i - 1}")
    elif t >> 4 == 1:
        return i  # application boolean: the value is in the tag
    if lvt == 5:
        n = b[i]
        i += 1
        if n == 254:
            n = struct.unpack(">H", b[i:i + 2])[0]
            i += 2
        elif n == 255:
            n = struct.unpack(">I", b[i:i + 4])[0]
            i += 4
    else:
        n = lvt
    if i + n > len(b):
        raise IndexError("value past the end")
    return i + n


def rpm_ack_objects(body):
    """The object identifiers at the top level of an RPM ACK's service data
    (each followed by its list of results); ValueError if it does not decode
    whole."""
    ids, i = [], 0
    try:
        while i < len(body):
            if body[i] != 0x0C:
                raise ValueError(f"expected object identifier at {i}, got {body[i]:#04x}")
            v = struct.unpack(">I", body[i + 1:i + 5])[0]
            ids.append((v >> 22, v & 0x3FFFFF))
            i += 5
            if body[i] != 0x1E:
                raise ValueError(f"expected list of results at {i}")
            i = skip_tag(body, i)
    except (IndexError, struct.error) as e:
        raise ValueError(f"truncated at {i}: {e}") from None
    return ids


class Answer:
    """One confirmed request's answer, assembled from its segments (Clause
    5.4.5, the requesting side)."""
    __slots__ = ("t", "last", "body", "segs", "next", "init", "win", "nak")

    def __init__(self, t):
        self.t = self.last = t
        self.body = bytearray()
        self.segs = 0
        self.next = 0   # sequence number expected next
        self.init = 0   # last sequence number acknowledged
        self.win = 1    # actual window size (the server's proposal)
        self.nak = 0    # negative SegmentACKs sent

    def feed(self, apdu, send):
        """One APDU for this invoke id: 'more', 'done', or ('bad', kind)."""
        kind = apdu[0] >> 4
        if kind != 3:
            return ("bad", PDU_KIND.get(kind, f"PDU type {kind}"))
        self.segs += 1
        if not apdu[0] & 0x08:  # unsegmented ComplexACK
            self.body += apdu[3:]
            return "done"
        seq, more = apdu[2], apdu[0] & 0x04
        if self.segs == 1:
            if seq != 0:
                return ("bad", f"first segment numbered {seq}")
            # Accept the proposed window (1..127: Clause 20.1.2.8).
            self.win = max(1, min(apdu[3], 127))
            self.body += apdu[5:]
            self.next = 1
            send(segment_ack(apdu[1], 0, self.win))
            return "more" if more else "done"
        if seq != self.next & 0xFF:
            # Out of order or duplicate: the last in-order segment again
            # (a NAK asks for the ones after it).
            self.nak += 1
            send(segment_ack(apdu[1], (self.next - 1) & 0xFF, self.win, nak=True))
            return "more"
        self.body += apdu[5:]
        self.next += 1
        if not more or seq == (self.init + self.win) & 0xFF:
            send(segment_ack(apdu[1], seq, self.win))
            self.init = seq
        return "more" if more else "done"


def call(s, frame, timeout=2.0):
    """One confirmed request on socket `s` (connected): the answer's service
    data (segments joined); RuntimeError on a bad answer or none."""
    s.send(frame)
    ans = Answer(time.perf_counter())
    s.settimeout(timeout)
    while True:
        try:
            a = s.recv(4096)
        except (TimeoutError, socket.timeout):
            raise RuntimeError(f"no answer to invoke {frame[8]} after {len(ans.body)} octets")
        if len(a) < 9 or a[7] != frame[8]:
            continue
        r = ans.feed(a[6:], s.send)
        if r == "done":
            return bytes(ans.body)
        if r != "more":
            raise RuntimeError(f"{r[1]} to {frame[6:12].hex()}...: {a[6:14].hex()}")


def read_object_list(s, device, invoke=1):
    """ReadProperty Device Object_List (whole; segmented if it must be)."""
    apdu = bytes([SEG_HEADER[0], SEG_HEADER[1], invoke, 12, 0x0C]) + \
        struct.pack(">I", (8 << 22) | device) + bytes([0x19, 76])
    body = call(s, bvlc(b"\x01\x04" + apdu))
    # Object id [0] (5 octets), property id [1] (2), then the value in [3].
    if body[7:8] != b"\x3e":
        raise RuntimeError(f"unexpected Object_List answer {body[:12].hex()}")
    ids, i = [], 8
    while body[i] == 0xC4:
        v = struct.unpack(">I", body[i + 1:i + 5])[0]
        ids.append((v >> 22, v & 0x3FFFFF))
        i += 5
    return ids


def create_object(s, ty, invoke):
    """CreateObject of type `ty` (the server picks the instance): its id."""
    apdu = bytes([0x00, 0x05, invoke, 10, 0x0E, 0x09, ty, 0x0F])
    body = call(s, bvlc(b"\x01\x04" + apdu))
    v = struct.unpack(">I", body[1:5])[0]
    return (v >> 22, v & 0x3FFFFF)


# Object type of castpoint's route block point k (shipped template,
# docs/route-points.md; bench/bacnet_routes.py): 12 MSV, 7 AI, 11 BO, 1 AV.
BLOCK_TYPES = [19, 19, 19] + [0] * 7 + [4, 19, 4, 4, 2] + [4, 19] * 8
TYPE_NAME = {0: "AI", 1: "AO", 2: "AV", 3: "BI", 4: "BO", 5: "BV", 8: "Device",
             13: "MSI", 14: "MSO", 19: "MSV", 20: "TL", 15: "NC", 29: "SV"}


def type_mix(objects):
    n = {}
    for ty, _ in objects:
        n[ty] = n.get(ty, 0) + 1
    return ", ".join(f"{n[t]} {TYPE_NAME.get(t, f'type {t}')}"
                     for t in sorted(n, key=lambda t: (-n[t], t)))


def castpoint_block(ids):
    """The first route block in castpoint's Object_List (instances
    slot x 1000 + k, docs/route-points.md), or None while not served."""
    by_slot = {}
    for ty, inst in ids:
        if ty != 8 and inst >= 1000:
            by_slot.setdefault(inst // 1000, []).append((ty, inst))
    for slot in sorted(by_slot):
        # The slot's Trend Logs and Structured View share its instances.
        block = sorted((o for o in by_slot[slot] if o[0] in BLOCK_TYPES), key=lambda o: o[1])
        if [t for t, _ in block] == BLOCK_TYPES:
            return block
    return None


def prepare(name, port, shape):
    """The objects each request of `shape` asks `name` for."""
    if shape == "four":
        return OBJECTS
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    device = 389077 if name == "bacserv" else 389001
    try:
        if name != "bacserv":
            # The demo route's block is served a moment after `ready`.
            deadline = time.time() + 30
            while (block := castpoint_block(read_object_list(s, device))) is None:
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: no route block in the Object_List after 30 s")
                time.sleep(0.1)
            if shape == "block":
                return block
            # The whole list once it stops changing (the route's Trend Logs
            # and view join it with the block).
            ids, prev = read_object_list(s, device), None
            while ids != prev and time.time() < deadline:
                time.sleep(0.2)
                ids, prev = read_object_list(s, device), ids
            return ids
        if shape == "device":
            return read_object_list(s, device)
        ids = [o for o in read_object_list(s, device) if o[0] != 8]
        for k, ty in enumerate(sorted(set(BLOCK_TYPES))):
            have = sum(1 for o in ids if o[0] == ty)
            for j in range(BLOCK_TYPES.count(ty) - have):
                ids.append(create_object(s, ty, 1 + (k * 40 + j) % 255))
        pool_ = {ty: sorted(o for o in ids if o[0] == ty) for ty in set(BLOCK_TYPES)}
        return [pool_[ty].pop(0) for ty in BLOCK_TYPES]
    finally:
        s.close()


def client_seg(port, start_at, seconds, window, objects, check, out):
    """One client process of a segmented shape: `window` requests
    outstanding on one socket, never an invoke id in flight."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.05)
    reqs = [rpm_request(i, objects) for i in range(256)]
    want = [tuple(o) for o in objects]
    pending = {}  # invoke id -> Answer
    lat, unanswered, partial, skipped = [], 0, 0, 0
    octets, segs, naks, decoded = 0, 0, 0, 0
    bad, seen_len = {}, set()
    nxt = 0
    perf = time.perf_counter

    def send_one():
        nonlocal nxt, skipped
        while nxt in pending:
            skipped += 1
            nxt = (nxt + 1) % 256
        pending[nxt] = Answer(perf())
        s.send(reqs[nxt])
        nxt = (nxt + 1) % 256

    def bad_answer(kind, a):
        if kind not in bad:
            bad[kind] = [0, a[6:16].hex()]
        bad[kind][0] += 1

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
            for inv, ans in list(pending.items()):
                if now - ans.last > SEG_TIMEOUT:
                    del pending[inv]
                    unanswered += 1
                    partial += ans.segs > 0
                    send_one()
            continue
        if len(a) < 9 or a[5] & 0x28:
            # The APDU is at octet 6 only without DNET/SNET (the
            # expecting-reply bit is set on segments that want an ACK).
            bad_answer("NPDU with a network address", a)
            continue
        ans = pending.get(a[7])
        if ans is None:
            continue  # a late answer to a request already counted as lost
        ans.last = perf()
        r = ans.feed(a[6:], s.send)
        if r == "more":
            continue
        del pending[a[7]]
        naks += ans.nak
        if r != "done":
            bad_answer(r[1], a)
            send_one()
            continue
        if check or len(ans.body) not in seen_len:
            seen_len.add(len(ans.body))
            decoded += 1
            try:
                got = rpm_ack_objects(ans.body)
                if got != want:
                    raise ValueError(f"{len(got)} objects answered, {len(want)} asked")
            except ValueError as e:
                bad_answer(f"ComplexACK that does not decode ({e})", a)
                send_one()
                continue
        lat.append(ans.last - ans.t)
        octets += len(ans.body)
        segs += ans.segs
        send_one()
    el = perf() - t0
    c1 = os.times()
    out.send((lat, unanswered, bad, octets, el,
              (c1.user - c0.user) + (c1.system - c0.system), skipped, segs, partial, naks,
              decoded))
    out.close()
    # Finish the requests still in flight (segments acknowledged, nothing
    # counted; run_cell has read the server's CPU by then): one left
    # mid-answer holds the server's segmented transaction until its segment
    # timeout, and bacserv, with 16 of them (5 s each), then refuses the next
    # cell's requests with Abort preempted-by-higher-priority-task.
    end = perf() + SEG_TIMEOUT
    while pending and perf() < end:
        try:
            a = s.recv(4096)
        except (TimeoutError, socket.timeout):
            continue
        ans = pending.get(a[7]) if len(a) > 8 and not a[5] & 0x28 else None
        if ans is not None and ans.feed(a[6:], s.send) != "more":
            del pending[a[7]]


def proc_cpu(pid):
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime, stime


def machine_cpu():
    f = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    return busy, f[6], sum(f[:8])


def run_cell(pid, port, seconds, window, clients, reuse=False, objects=None, check=False):
    """One cell; `objects` given: a segmented shape (client_seg)."""
    clients = max(1, min(clients, window))
    split = [window // clients + (1 if k < window % clients else 0) for k in range(clients)]
    pipes, procs = [], []
    start_at = time.time() + 0.3
    for w in split:
        r, wr = multiprocessing.Pipe(False)
        if objects is None:
            p = multiprocessing.Process(target=client, args=(port, start_at, seconds, w, reuse, wr))
        else:
            p = multiprocessing.Process(target=client_seg,
                                        args=(port, start_at, seconds, w, objects, check, wr))
        p.start()
        pipes.append(r)
        procs.append(p)
    while time.time() < start_at:
        time.sleep(0.001)
    c0, m0 = proc_cpu(pid), machine_cpu()
    res = [r.recv() for r in pipes]
    c1, m1 = proc_cpu(pid), machine_cpu()
    for p in procs:
        p.join()  # segmented shapes: once the clients finished their requests in flight
    lat = [x for r in res for x in r[0]]
    total = m1[2] - m0[2]
    seg = objects is not None
    bad = {}
    for r in res:
        for kind, (n, example) in (r[2].items() if seg else ()):
            bad.setdefault(kind, [0, example])[0] += n
    return {
        "lat": lat,
        "n": len(lat),
        "unanswered": sum(r[1] for r in res),
        # Four: a count (not a ComplexACK) and the last answer's octets;
        # segmented: {kind: [count, first bytes]} and octets summed.
        "bad": bad if seg else sum(r[2] for r in res),
        "octets": sum(r[3] for r in res) if seg else max(r[3] for r in res),
        "segs": sum(r[7] for r in res) if seg else 0,
        "partial": sum(r[8] for r in res) if seg else 0,
        "naks": sum(r[9] for r in res) if seg else 0,
        "decoded": sum(r[10] for r in res) if seg else 0,
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
    seg = isinstance(cells[0]["bad"], dict)
    bad = {}
    for c in cells:
        for kind, (k, example) in (c["bad"].items() if seg else ()):
            bad.setdefault(kind, [0, example])[0] += k
    octets = sum(c["octets"] for c in cells)
    return {
        "seg": seg,
        "bad_kinds": bad,
        "partial": sum(c["partial"] for c in cells),
        "naks": sum(c["naks"] for c in cells),
        "decoded": sum(c["decoded"] for c in cells),
        "octets_per": octets / max(n, 1),
        "segs_per": sum(c["segs"] for c in cells) / max(n, 1),
        "ns_octet": 1e9 * sum(c["cpu"] for c in cells) / octets if octets else float("nan"),
        "rate": n / secs,
        "p50": lat[n // 2] * 1e3 if n else float("nan"),
        "p99": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "max": lat[-1] * 1e3 if n else float("nan"),
        "n": n,
        "unanswered": sum(c["unanswered"] for c in cells),
        "skipped": sum(c["skipped"] for c in cells),
        "bad": sum(sum(k for k, _ in c["bad"].values()) if seg else c["bad"] for c in cells),
        "octets": 0 if seg else max(c["octets"] for c in cells),
        "cpu_pct": 100 * sum(c["cpu"] for c in cells) / secs,
        "us_req": 1e6 * sum(c["cpu"] for c in cells) / n if n else float("nan"),
        "client_pct": 100 * sum(c["client_cpu"] for c in cells) / secs,
        "m_busy": 100 * statistics.mean(c["m_busy"] for c in cells) * os.cpu_count(),
        "m_soft": 100 * statistics.mean(c["m_soft"] for c in cells) * os.cpu_count(),
    }


def ratio(x, y):
    """x/y as the ratios line prints it; n/a where a side has no answers."""
    return f"x{x / y:.2f}" if x == x and y == y and y else "n/a"


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
    ap.add_argument("--shape", choices=("four", "block", "device"), default="four",
                    help="four objects (unsegmented), one route block, or the whole device "
                    "(segmented)")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--window", default="1,8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2,
                    help="client processes sharing the window (each its own socket)")
    ap.add_argument("--reuse-ids", action="store_true",
                    help="reuse an invoke id still in flight (the old client's behaviour; "
                    "shape four only)")
    ap.add_argument("--check", action="store_true",
                    help="segmented shapes: decode every answer, not only each new length")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "castpoint"))
    ap.add_argument("--before", help="a second castpoint binary (an earlier build) measured in "
                    "the same run, for before/after figures")
    ap.add_argument("--bacserv", help="bacserv binary (default: BACSERV or "
                    "/tmp/bacnet-stack/bin/bacserv for shape four; BACSERV_SEG or "
                    "/tmp/bacnet-stack-seg/bin/bacserv, a build that segments, for the others)")
    a = ap.parse_args()
    seg = a.shape != "four"
    if a.bacserv is None:
        a.bacserv = (os.environ.get("BACSERV_SEG", "/tmp/bacnet-stack-seg/bin/bacserv") if seg
                     else os.environ.get("BACSERV", "/tmp/bacnet-stack/bin/bacserv"))
    if seg and a.reuse_ids:
        ap.error("--reuse-ids is for shape four")
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
    asked = {}
    try:
        for name, _, port in servers:
            asked[name] = prepare(name, port, a.shape)
        # Idle CPU (castpoint's default config runs a demo route): it is in
        # every cell's server CPU, so it is printed to be discounted.
        c0 = {name: proc_cpu(p.pid) for name, p, _ in servers}
        time.sleep(2)
        idle = {name: 50 * (proc_cpu(p.pid) - c0[name]) for name, p, _ in servers}
        for name, p, port in servers:
            run_cell(p.pid, port, 0.5, 8, a.clients,  # warm-up
                     objects=asked[name] if seg else None)
        for r in range(a.rounds):
            for w in windows:
                # Rotated each round, so no server always runs first.
                k = r % len(servers)
                order = servers[k:] + servers[:k]
                for name, p, port in order:
                    cells.setdefault((name, w), []).append(
                        run_cell(p.pid, port, a.seconds, w, a.clients, a.reuse_ids,
                                 asked[name] if seg else None, a.check))
    finally:
        for _, p, _ in servers:
            p.terminate()
            p.wait()
    what = {
        "four": "RPM ALL of AI 1, AV 1, BO 1, MSV 1 (one request, unsegmented)",
        "block": f"RPM ALL of one route block ({len(BLOCK_TYPES)} objects, segmented)",
        "device": "RPM ALL of every object in the Object_List (segmented)",
    }[a.shape]
    print(f"{what}, "
          f"{a.seconds:g} s x {a.rounds} rounds per cell (alternating), {a.clients} client "
          f"processes, loopback, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"castpoint {a.bin}{' (invoke ids reused while in flight)' if a.reuse_ids else ''}"
          f"{f', bacserv {a.bacserv}' if seg else ''}; "
          f"idle CPU % " + ", ".join(f"{n} {v:.1f}" for n, v in idle.items()) + "\n")
    if seg:
        print("Objects asked (max-segments-accepted 64, max-APDU 1476, segmented response "
              "accepted):")
        for name, objs in asked.items():
            ids = " ".join(f"{TYPE_NAME.get(t, t)}{i}" for t, i in objs)
            print(f"- {name}: {len(objs)} objects ({type_mix(objs)})"
                  + (f": {ids}" if a.shape == "block" else ""))
        print()
    pooled = {k: pool(v) for k, v in cells.items()}
    if seg:
        print("| server | window | req/s | p50 ms | p99 ms | max ms | answered | unanswered | "
              "id in flight after 255 newer | "
              "objects | octets/answer | segments/answer | server CPU % | server µs/req | "
              "server ns/octet | client CPU % | machine busy % | machine softirq % |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
              "---:|---:|")
    else:
        print("| server | window | req/s | p50 ms | p99 ms | max ms | answered | unanswered | "
              "id in flight after 255 newer | "
              "octets | server CPU % | server µs/req | client CPU % | machine busy % | "
              "machine softirq % |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, w), s in sorted(pooled.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        mid = (f"{len(asked[name])} | {s['octets_per']:.0f} | {s['segs_per']:.1f} | "
               f"{s['cpu_pct']:.0f} | {s['us_req']:.1f} | {s['ns_octet']:.1f}" if seg else
               f"{s['octets']} | {s['cpu_pct']:.0f} | {s['us_req']:.1f}")
        print(f"| {name} | {w} | {s['rate']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | "
              f"{s['max']:.1f} | {s['n']} | {s['unanswered']} | {s['skipped']} | {mid} | "
              f"{s['client_pct']:.0f} | {s['m_busy']:.0f} | {s['m_soft']:.1f} |")
    names = [n for n, _, _ in servers]
    if "bacserv" in names:
        print()
        for w in windows:
            b = pooled[("bacserv", w)]
            for n in names:
                if n == "bacserv":
                    continue
                c = pooled[(n, w)]
                line = (f"window {w}: {n}/bacserv req/s {ratio(c['rate'], b['rate'])}, "
                        f"p99 {ratio(c['p99'], b['p99'])}, CPU per request "
                        f"{ratio(c['us_req'], b['us_req'])}")
                if seg:
                    per_obj = ratio(c["us_req"] / len(asked[n]), b["us_req"] / len(asked["bacserv"]))
                    line += (f", CPU per answer octet {ratio(c['ns_octet'], b['ns_octet'])}, "
                             f"CPU per object {per_obj} (octets per answer "
                             f"{c['octets_per']:.0f} vs {b['octets_per']:.0f}, "
                             f"objects {len(asked[n])} vs {len(asked['bacserv'])})")
                    for who, x in ((n, c), ("bacserv", b)):
                        if x["bad"]:
                            # The server did the work of a refused request too.
                            line += (f"; {who} refused {x['bad']} requests (bad answers "
                                     f"below), its CPU per request counts their work")
                print(line)
    if not seg:
        print("\n(machine % is of one core, summed over all cores; bad answers (not a "
              "ComplexACK): " + ", ".join(f"{n} w{w} {s['bad']}" for (n, w), s in pooled.items())
              + ")")
        return
    print("\n(machine % is of one core, summed over all cores; answers decoded (object ids "
          "as asked): " + ", ".join(f"{n} w{w} {s['decoded']}" for (n, w), s in pooled.items())
          + "; bad answers: " + ", ".join(f"{n} w{w} {s['bad']}" for (n, w), s in pooled.items())
          + "; unanswered after some segments: "
          + ", ".join(f"{n} w{w} {s['partial']}" for (n, w), s in pooled.items())
          + "; negative SegmentACKs: "
          + ", ".join(f"{n} w{w} {s['naks']}" for (n, w), s in pooled.items()) + ")")
    for (n, w), s in pooled.items():
        for kind, (k, example) in s["bad_kinds"].items():
            print(f"bad answer: {n} w{w}: {k} x {kind}; first APDU octets {example}")


if __name__ == "__main__":
    sys.exit(main())
