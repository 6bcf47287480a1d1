#!/usr/bin/env python3
"""Modbus TCP benchmark: FC04 reads of 10 registers per second with 1 and 8 connections against castpoint (release build), a pymodbus server and a bare tokio-modbus server, measured in the same run; prints a Markdown table with the ratios.

Usage: python3 bench/modbus.py [--seconds 3] [--rounds 3] [--no-build]

The load generator (bench/modbus_load, Rust, closed loop: each connection
sends one request and waits for its answer) runs on one thread so that it is
the same, cheap client for every server. All servers listen on 127.0.0.1.
Each figure is the median of --rounds runs, servers interleaved per round so
that background load on the machine hits all of them alike.
"""
import argparse
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH_TARGET = ROOT / "target" / "bench-modbus"
LOAD = BENCH_TARGET / "release" / "modbus-load"
BARE = BENCH_TARGET / "release" / "modbus-bare"
CASTPOINT = ROOT / "target" / "release" / "castpoint"

PYMODBUS_SERVER = r"""
import asyncio, sys
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer
port = int(sys.argv[1])
dev = ModbusDeviceContext(ir=ModbusSequentialDataBlock(1, list(range(100))))
ctx = ModbusServerContext(devices=dev, single=True)
asyncio.run(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", port)))
"""


def build():
    subprocess.run(["cargo", "build", "--release", "--bin", "castpoint"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--manifest-path",
                    str(ROOT / "bench" / "modbus_load" / "Cargo.toml"),
                    "--target-dir", str(BENCH_TARGET)], cwd=ROOT, check=True)


def read_listen_line(proc, what="modbus"):
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{proc.args[0]} exited before listening")
        parts = line.split()
        if parts[:2] == ["listening", what]:
            host, port = parts[2].rsplit(":", 1)
            return host, int(port)
    raise RuntimeError("no listening line")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def load(addr, conns, seconds):
    out = subprocess.run([str(LOAD), f"{addr[0]}:{addr[1]}", str(conns), str(seconds)],
                         capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    f = out.split()
    vals = dict(zip(f[0::2], f[1::2]))
    if int(vals["errors"]) or int(vals["failed_connections"]):
        raise RuntimeError(f"bad answers from {addr}: {out}")
    return float(vals["rps"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        build()
    procs = []
    try:
        data = tempfile.mkdtemp(prefix="castpoint-bench-")
        cp = subprocess.Popen([str(CASTPOINT), "run", "--http", "127.0.0.1:0", "--bacnet",
                               "127.0.0.1:0", "--modbus", "127.0.0.1:0", "--rtmp", "127.0.0.1:0", "--data-dir", data],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(cp)
        servers = {"castpoint": read_listen_line(cp)}
        bare = subprocess.Popen([str(BARE), "127.0.0.1:0"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(bare)
        servers["tokio-modbus 0.17 (bare)"] = read_listen_line(bare)
        port = free_port()
        py = subprocess.Popen([sys.executable, "-c", PYMODBUS_SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(py)
        wait_port(port)
        servers["pymodbus " + __import__("pymodbus").__version__] = ("127.0.0.1", port)

        results = {(s, c): [] for s in servers for c in (1, 8)}
        for _ in range(a.rounds):
            for conns in (1, 8):
                for name, addr in servers.items():
                    results[(name, conns)].append(load(addr, conns, a.seconds))
        med = {k: statistics.median(v) for k, v in results.items()}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    names = list(servers)
    cp_name, bare_name, py_name = names
    print(f"\nFC04, 10 registers per request, closed loop, {a.seconds:g} s x {a.rounds} rounds "
          f"(median), {__import__('os').cpu_count()} CPUs\n")
    print("| server | 1 connection (req/s) | 8 connections (req/s) |")
    print("|---|---:|---:|")
    for n in names:
        print(f"| {n} | {med[(n, 1)]:,.0f} | {med[(n, 8)]:,.0f} |")
    print(f"| castpoint / pymodbus | {med[(cp_name, 1)] / med[(py_name, 1)]:.1f}x "
          f"| {med[(cp_name, 8)] / med[(py_name, 8)]:.1f}x |")
    print(f"| castpoint / tokio-modbus | {med[(cp_name, 1)] / med[(bare_name, 1)]:.2f}x "
          f"| {med[(cp_name, 8)] / med[(bare_name, 8)]:.2f}x |")


if __name__ == "__main__":
    main()
