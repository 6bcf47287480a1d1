#!/usr/bin/env python3
"""MQTT fleet benchmark: N castpoint Sparkplug B edge nodes (default 50) into one Mosquitto broker with telemetry sampled every second; prints host-side publish rate, broker-side message rate and castpoint CPU/RSS per node, against castpoint nodes with [mqtt] off in the same run.

Usage: python3 bench/mqtt_fleet.py [--nodes 50] [--routes 1] [--baseline 5] [--seconds 20] [--bin PATH]

Built on simulators/fleet.py (same broker, node and host pieces). Rates are
what a Sparkplug host subscribed to the group receives (NBIRTH excluded:
the window starts after every node has birthed) and the broker's own
$SYS/broker/messages/{received,sent} counters (sys_interval 1). CPU is the
process's utime+stime over the window from /proc, in % of one core.
Every node runs --routes routes (generator input, HTTP-TS output), each a
Sparkplug device (DBIRTH/DDATA). Baseline nodes run the same binary and
config with `[mqtt] enabled = false`, so the difference is what the edge
node costs. Everything is on
127.0.0.1 with free ports and temporary data dirs.
"""
import argparse
import importlib.util
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fleet", ROOT / "simulators" / "fleet.py")
fleet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fleet)

PERIODS = {"cpu_usage": "1s", "memory_usage": "1s", "network_throughput": "1s"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--baseline", type=int, default=5)
    ap.add_argument("--routes", type=int, default=1, help="routes (devices) per node")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--bin")
    a = ap.parse_args()
    if shutil.which("mosquitto") is None:
        sys.exit("mosquitto is not installed")
    binary = fleet.castpoint_bin(a.bin)
    work = tempfile.mkdtemp(prefix="castpoint-mqtt-bench-")
    broker = fleet.Broker(work)
    view = fleet.FleetView(broker.port)
    nodes, base = [], []
    try:
        t0 = time.time()
        for i in range(a.nodes):
            nodes.append(fleet.Node(binary, work, broker.port, f"node-{i + 1:03d}", PERIODS,
                                    routes=a.routes))
        fleet.wait(lambda: sum(n["state"] == "ONLINE" for n in view.nodes.values()) == a.nodes,
                   120, "every node's NBIRTH")
        fleet.wait(lambda: sum(d["state"] == "ONLINE" for n in view.nodes.values()
                               for d in n["devices"].values()) == a.nodes * a.routes,
                   120, "every route's DBIRTH")
        t_up = time.time() - t0
        # Baseline: same binary and config, [mqtt] off.
        for i in range(a.baseline):
            base.append(fleet.Node(binary, work, broker.port, f"base-{i + 1:03d}", PERIODS,
                                   mqtt=False, routes=a.routes))
        time.sleep(2)  # let start-up work settle before the window opens

        def sys_counter(k):
            with view.lock:
                v = view.sys.get(f"$SYS/broker/messages/{k}")
            return int(v) if v and v.isdigit() else None
        fleet.wait(lambda: sys_counter("received") is not None, 10, "$SYS counters")
        c0 = {n.name: n.cpu_seconds() for n in nodes + base}
        with view.lock:
            m0, k0 = view.msgs, view.metrics
            kinds0 = dict(view.kinds)
        r0, s0 = sys_counter("received"), sys_counter("sent")
        w0 = time.time()
        time.sleep(a.seconds)  # the measurement window
        w = time.time() - w0
        c1 = {n.name: n.cpu_seconds() for n in nodes + base}
        with view.lock:
            m1, k1 = view.msgs, view.metrics
            kinds1 = dict(view.kinds)

        def rate(kind, i):
            return (kinds1.get(kind, (0, 0))[i] - kinds0.get(kind, (0, 0))[i]) / w
        r1, s1 = sys_counter("received"), sys_counter("sent")
        cpu = {k: 100 * (c1[k] - c0[k]) / w for k in c0}
        cpu_mqtt = [cpu[n.name] for n in nodes]
        cpu_base = [cpu[n.name] for n in base]
        rss_mqtt = [n.rss_mib() for n in nodes]
        rss_base = [n.rss_mib() for n in base]
        online = sum(n["state"] == "ONLINE" for n in view.nodes.values())
        devices = sum(d["state"] == "ONLINE" for n in view.nodes.values()
                      for d in n["devices"].values())
        print(f"## MQTT Sparkplug B fleet: {a.nodes} castpoint nodes x {a.routes} route(s) -> "
              f"1 mosquitto ({w:.0f} s window, telemetry every 1 s, "
              f"{pathlib.Path(binary).parent.name} build)\n")
        print("| figure | value |")
        print("|---|---|")
        print(f"| nodes online (NBIRTH seen by the host) | {online} / {a.nodes} "
              f"(all up after {t_up:.1f} s) |")
        print(f"| route devices online (DBIRTH seen by the host) | {devices} / "
              f"{a.nodes * a.routes} |")
        print(f"| host-received messages/s (NDATA + DDATA, all nodes) | {(m1 - m0) / w:.1f} |")
        print(f"| of which NDATA / DDATA messages/s | {rate('NDATA', 0):.1f} / "
              f"{rate('DDATA', 0):.1f} |")
        print(f"| host-received messages/s per node | {(m1 - m0) / w / a.nodes:.2f} |")
        print(f"| host-received metrics/s (all nodes; NDATA / DDATA) | {(k1 - k0) / w:.1f} "
              f"({rate('NDATA', 1):.1f} / {rate('DDATA', 1):.1f}) |")
        if r0 is not None and r1 is not None:
            print(f"| broker messages received/s ($SYS) | {(r1 - r0) / w:.1f} |")
            print(f"| broker messages sent/s ($SYS) | {(s1 - s0) / w:.1f} |")
        print(f"| castpoint CPU per node, [mqtt] on: mean / median / max (% of a core) | "
              f"{statistics.mean(cpu_mqtt):.2f} / {statistics.median(cpu_mqtt):.2f} / "
              f"{max(cpu_mqtt):.2f} |")
        if cpu_base:
            print(f"| castpoint CPU per node, [mqtt] off ({a.baseline} nodes, same run): mean / "
                  f"median / max | {statistics.mean(cpu_base):.2f} / "
                  f"{statistics.median(cpu_base):.2f} / {max(cpu_base):.2f} |")
        print(f"| castpoint RSS per node, [mqtt] on: mean (MiB) | {statistics.mean(rss_mqtt):.1f} |")
        if rss_base:
            print(f"| castpoint RSS per node, [mqtt] off: mean (MiB) | "
                  f"{statistics.mean(rss_base):.1f} |")
    finally:
        view.close()
        for n in nodes + base:
            n.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
