#!/usr/bin/env python3
"""Haystack benchmark: `read` of all points (Zinc) req/s with 1 and 8 concurrent clients, vs the REST /api/points baseline, and watchPoll latency after a value change. Prints a Markdown table.

Usage: cargo build --release && python3 bench/haystack.py [--seconds 5] [--routes 100 --outputs 4]
With --routes N the server runs bench/bacnet_routes.py's config of N routes
(each its block of route points: issue 20's scale case) instead of the
shipped castpoint.toml, and `read` returns every route point too.
Each client is its own process with one keep-alive connection, so the GIL does
not serialise the clients; on a small machine the clients share the CPU with
the server, which the figures include.
"""
import argparse
import base64
import hashlib
import hmac
import http.client
import multiprocessing as mp
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
os.environ.setdefault("CASTPOINT_BIN", str(ROOT / "target" / "release" / "castpoint"))
from conftest import Server  # noqa: E402

PASSWORD = "bench-pass"


def user_entry(name, role, password, iterations=4096):
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return (f'[[haystack.user]]\nname = "{name}"\nrole = "{role}"\nsalt = "{b64(salt)}"\n'
            f'iterations = {iterations}\nstored_key = "{b64(hashlib.sha256(ck).digest())}"\n'
            f'server_key = "{b64(hmac.new(salted, b"Server Key", "sha256").digest())}"\n')


def login(uri):
    from phable.auth.scram import ScramScheme
    return ScramScheme(uri, "bench", PASSWORD, "text/zinc").get_auth_token()


def worker(host, port, path, headers, seconds, q):
    conn = http.client.HTTPConnection(host, port)
    n = 0
    nbytes = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"{path}: HTTP {r.status}")
        n += 1
        nbytes += len(body)
    q.put((n, nbytes))


def load(host, port, path, headers, clients, seconds):
    q = mp.Queue()
    ps = [mp.Process(target=worker, args=(host, port, path, headers, seconds, q)) for _ in range(clients)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    el = time.perf_counter() - t0
    total = sum(r[0] for r in res)
    return total / seconds, sum(r[1] for r in res) / max(total, 1), el


def count_rows(host, port, path, headers):
    """Rows of one Zinc grid answer: the line after the column names on."""
    conn = http.client.HTTPConnection(host, port)
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read().decode()
    if r.status != 200:
        raise SystemExit(f"{path}: HTTP {r.status}")
    return len([ln for ln in body.split("\n")[2:] if ln.strip()])


def post(conn, path, body, tok):
    conn.request("POST", path, body=body.encode(), headers={
        "Authorization": f"BEARER authToken={tok}", "Content-Type": "text/zinc", "Accept": "text/zinc"})
    r = conn.getresponse()
    data = r.read().decode()
    if r.status != 200 or " err" in data.split("\n", 1)[0]:
        raise SystemExit(f"{path}: {r.status} {data}")
    return data


def watch_latency(host, port, base, tok, n):
    conn = http.client.HTTPConnection(host, port)
    sub = post(conn, f"{base}/watchSub", 'ver:"3.0" watchDis:"bench" lease:5min\nid\n@recording_enable\n', tok)
    wid = sub.split('watchId:"', 1)[1].split('"', 1)[0]
    poll_body = f'ver:"3.0" watchId:"{wid}"\nempty\n'
    lat = []
    poll_only = []
    for i in range(n):
        val = "T" if i % 2 == 0 else "F"
        post(conn, f"{base}/pointWrite", f'ver:"3.0"\nid,level,val\n@recording_enable,10,{val}\n', tok)
        # The write has returned: the change is committed. Time from here to
        # the poll that reports it.
        t0 = time.perf_counter()
        while True:
            z = post(conn, f"{base}/watchPoll", poll_body, tok)
            if "@recording_enable" in z:
                break
        lat.append((time.perf_counter() - t0) * 1e3)
        t1 = time.perf_counter()
        post(conn, f"{base}/watchPoll", poll_body, tok)  # nothing changed
        poll_only.append((time.perf_counter() - t1) * 1e3)
    post(conn, f"{base}/pointWrite", 'ver:"3.0"\nid,level,val\n@recording_enable,10,N\n', tok)
    return lat, poll_only


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--polls", type=int, default=300)
    ap.add_argument("--routes", type=int, default=0)
    ap.add_argument("--outputs", type=int, default=4)
    a = ap.parse_args()
    if a.routes:
        sys.path.insert(0, str(ROOT / "bench"))
        from bacnet_routes import config as routes_config
        base_cfg = pathlib.Path(routes_config(a.routes, a.outputs)).read_text()
        what = f"{a.routes} routes x {a.outputs} outputs"
    else:
        base_cfg = (ROOT / "castpoint.toml").read_text()
        what = "castpoint.toml"
    cfg = base_cfg + "\n" + user_entry("bench", "operator", PASSWORD)
    path = pathlib.Path(tempfile.mkdtemp(prefix="castpoint-bench-")) / "castpoint.toml"
    path.write_text(cfg)
    s = Server(config=path)
    try:
        host, port = s.addrs["http"]
        base = "/api/haystack"
        tok = login(s.http_base + base)
        hz = {"Authorization": f"BEARER authToken={tok}", "Accept": "text/zinc"}
        rows = []
        n_rows = count_rows(host, port, f"{base}/read?filter=point", hz)
        for clients in (1, 8):
            hs, hb, _ = load(host, port, f"{base}/read?filter=point", hz, clients, a.seconds)
            rs, rb, _ = load(host, port, "/api/points", {"Accept": "application/json"}, clients, a.seconds)
            rows.append((clients, hs, hb, rs, rb))
        lat, poll_only = watch_latency(host, port, base, tok, a.polls)
    finally:
        s.stop()
    cpu = os.cpu_count()
    load_avg = os.getloadavg()[0]
    print(f"Haystack bench, {what} ({cpu} CPUs shared by server and clients, {os.path.basename(os.path.dirname(os.environ['CASTPOINT_BIN']))} build, "
          f"{a.seconds:g}s per run, load average {load_avg:.1f} at the end)\n")
    print(f"| clients | Haystack read all points (Zinc, {n_rows} rows) req/s | bytes/resp | REST /api/points (JSON, the 23 server points) req/s | bytes/resp | ratio Haystack/REST |")
    print("|---|---|---|---|---|---|")
    for c, hs, hb, rs, rb in rows:
        print(f"| {c} | {hs:,.0f} | {hb:,.0f} | {rs:,.0f} | {rb:,.0f} | {hs / rs:.2f} |")
    print()
    print("| watchPoll after a pointWrite | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    print(f"| change reported (write returned -> poll with the change) | {statistics.median(lat):.3f} | {pct(lat, 0.99):.3f} | {max(lat):.3f} |")
    print(f"| empty poll round trip (no change) | {statistics.median(poll_only):.3f} | {pct(poll_only, 0.99):.3f} | {max(poll_only):.3f} |")


if __name__ == "__main__":
    main()
