"""Starts castpoint for a benchmark with every listener on 127.0.0.1:0 and waits for `ready`, shared by the route benchmarks."""
import subprocess
import time

LISTENERS = ("--http", "--bacnet", "--modbus", "--rtmp")


def start(binary, config, data_dir):
    """(process, {listener: "host:port"}, seconds to `ready`). stdout stays
    a pipe: a caller that keeps the server running long must drain it."""
    args = [binary, "run", "--config", str(config), "--data-dir", str(data_dir)]
    for flag in LISTENERS:
        args += [flag, "127.0.0.1:0"]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addrs = {}
    for line in p.stdout:
        parts = line.split()
        if parts[:1] == ["listening"] and len(parts) >= 3:
            addrs[parts[1]] = parts[2]
        if parts == ["ready"]:
            return p, addrs, time.perf_counter() - t0
    raise RuntimeError("castpoint exited before it was ready")


def port(addrs, name):
    return int(addrs[name].rsplit(":", 1)[1])
