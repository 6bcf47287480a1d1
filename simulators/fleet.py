#!/usr/bin/env python3
"""Fleet demo: one Mosquitto broker, several castpoint routers as Sparkplug B edge nodes, and the fleet's status table built from the broker alone.

Usage: python3 simulators/fleet.py [--nodes 4] [--routes 2] [--seconds 8] [--kill 1] [--bin PATH]

Everything runs on 127.0.0.1 (free ports, temporary data dirs, removed at
the end). Each node runs --routes routes (a generator input, an HTTP-TS
output), each one a Sparkplug device `route-<slot>`. The tables are what any
Sparkplug host on the broker would show: they are decoded from
NBIRTH/NDATA/NDEATH and DBIRTH/DDATA/DDEATH only (the sparkplug_b protobuf
of pysparkplug), never from castpoint's own APIs: one row per node, one row
per route device. With --kill N, N nodes are SIGKILLed and the tables are
printed again once the broker has published their NDEATH (the MQTT will),
which takes their devices offline too. bench/mqtt_fleet.py uses the same
pieces at 50 nodes.
Needs: mosquitto (Debian package), pysparkplug and paho-mqtt (PyPI), a built
castpoint (target/release or target/debug, or --bin).
"""
import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as paho
from pysparkplug._protobuf import Payload

ROOT = pathlib.Path(__file__).resolve().parents[1]
GROUP = "fleet"
COLUMNS = ["cpu_usage", "memory_usage", "active_streams", "server_status",
           "communication_status"]
ROUTE_COLUMNS = ["route_status", "input_status", "input_bitrate", "output_bitrate",
                 "route_enable"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def castpoint_bin(explicit=None):
    if explicit:
        return explicit
    for prof in ("release", "debug"):
        p = ROOT / "target" / prof / "castpoint"
        if p.exists():
            return str(p)
    sys.exit("build castpoint first (cargo build --release --bin castpoint)")


class Broker:
    """mosquitto on a free loopback port, $SYS statistics every second."""

    def __init__(self, workdir):
        self.port = free_port()
        conf = pathlib.Path(workdir, "mosquitto.conf")
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nsys_interval 1\nmax_queued_messages 100000\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait(up, 10, "mosquitto")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Node:
    """One castpoint with [mqtt] on, its own data dir, every listener on port 0."""

    def __init__(self, binary, workdir, broker_port, name, periods=None, mqtt=True, routes=0):
        self.name = name
        d = pathlib.Path(workdir, name)
        d.mkdir()
        per = ""
        if periods:
            per = "[telemetry.periods]\n" + "".join(f'{k} = "{v}"\n' for k, v in periods.items())
        cfg = d / "castpoint.toml"
        rts = "".join(
            f'[[route]]\nname = "{name}-cam{r + 1}"\n'
            f'[[route.input]]\nname = "gen"\ntype = "generator"\nbitrate = 500000\n'
            f'[[route.output]]\nname = "web"\ntype = "http"\npath = "cam{r + 1}"\n'
            for r in range(routes))
        cfg.write_text(f"""data_dir = "{d}/data"
{per}
{rts}
[mqtt]
enabled = {"true" if mqtt else "false"}
brokers = ["mqtt://127.0.0.1:{broker_port}"]
group_id = "{GROUP}"
edge_node_id = "{name}"
reconnect_max = "1s"
""")
        self.proc = subprocess.Popen(
            [binary, "run", "--config", str(cfg), "--http", "127.0.0.1:0",
             "--bacnet", "127.0.0.1:0", "--modbus", "127.0.0.1:0", "--rtmp", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} exited before it was ready")
            if line.strip() == "ready" or line.startswith("degraded:"):
                break
        # Keep draining stdout so the process never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def cpu_seconds(self):
        """utime + stime of the process, in seconds (/proc/PID/stat)."""
        f = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class FleetView:
    """A Sparkplug host's picture of the group, from broker messages only."""

    def __init__(self, port):
        self.lock = threading.Lock()
        self.nodes = {}  # name -> dict
        self.msgs = 0
        self.metrics = 0
        self.kinds = {}  # message type -> (messages, metrics)
        self.sys = {}
        self.c = paho.Client(client_id=f"fleet-view-{os.getpid()}")
        self.c.on_connect = lambda c, *_: (c.subscribe(f"spBv1.0/{GROUP}/#", 0),
                                           c.subscribe("$SYS/broker/#", 0))
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, _c, _u, m):
        if m.topic.startswith("$SYS/"):
            with self.lock:
                self.sys[m.topic] = m.payload.decode(errors="replace")
            return
        parts = m.topic.split("/")
        if len(parts) < 4:
            return
        kind, name = parts[2], parts[3]
        dev_id = parts[4] if len(parts) > 4 else None
        try:
            p = Payload.FromString(m.payload)
        except Exception:  # noqa: BLE001 - a bad payload is shown, not fatal
            return
        with self.lock:
            self.msgs += 1
            self.metrics += len(p.metrics)
            k = self.kinds.get(kind, (0, 0))
            self.kinds[kind] = (k[0] + 1, k[1] + len(p.metrics))
            n = self.nodes.setdefault(name, {"state": "?", "values": {}, "aliases": {},
                                             "states": {}, "births": 0, "data": 0,
                                             "devices": {}})
            n["last"] = time.time()
            if dev_id is not None:
                self._device(n, kind, dev_id, p)
            elif kind == "NBIRTH":
                n["births"] += 1
                n["state"] = "ONLINE"
                n["aliases"] = {m.alias: m.name for m in p.metrics if m.HasField("alias")}
                for mt in p.metrics:
                    if mt.name == "bdSeq":
                        n["bdSeq"] = mt.long_value
                    props = dict(zip(mt.properties.keys, mt.properties.values))
                    if "states" in props:
                        n["states"][mt.name] = props["states"].string_value.split("|")
                self._apply(n, p.metrics)
            elif kind == "NDATA":
                n["data"] += 1
                self._apply(n, p.metrics)
            elif kind == "NDEATH":
                b = next((mt.long_value for mt in p.metrics if mt.name == "bdSeq"), None)
                # Only the death of the connection that birthed counts.
                if b == n.get("bdSeq"):
                    n["state"] = "OFFLINE"
                    # spB 3.0: a node's death is the death of its devices.
                    for d in n["devices"].values():
                        d["state"] = "OFFLINE"

    def _device(self, n, kind, dev_id, p):
        """DBIRTH/DDATA/DDEATH of one route device of node `n`. Aliases are
        unique across the node and its devices; names and states are per
        device (every route has a `route_status`)."""
        d = n["devices"].setdefault(dev_id, {"state": "?", "values": {}, "aliases": {},
                                             "states": {}, "births": 0, "data": 0})
        if kind == "DBIRTH":
            d["births"] += 1
            d["state"] = "ONLINE"
            d["aliases"] = {m.alias: m.name for m in p.metrics if m.HasField("alias")}
            d["values"] = {}
            for mt in p.metrics:
                props = dict(zip(mt.properties.keys, mt.properties.values))
                if "states" in props:
                    d["states"][mt.name] = props["states"].string_value.split("|")
            self._apply(d, p.metrics)
        elif kind == "DDATA":
            d["data"] += 1
            self._apply(d, p.metrics)
        elif kind == "DDEATH":
            d["state"] = "OFFLINE"

    @staticmethod
    def _apply(n, metrics):
        for mt in metrics:
            if mt.is_historical:
                continue
            name = mt.name or n["aliases"].get(mt.alias)
            if name is None:
                continue
            if mt.is_null:
                v = None
            else:
                v = getattr(mt, mt.WhichOneof("value")) if mt.WhichOneof("value") else None
            states = n["states"].get(name)
            if states and isinstance(v, int) and 1 <= v <= len(states):
                v = states[v - 1]
            n["values"][name] = v

    def table(self):
        with self.lock:
            rows = sorted(self.nodes.items())
            head = ["node", "state", "bdSeq", "births", "NDATA"] + COLUMNS + ["last msg"]
            out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            now = time.time()
            for name, n in rows:
                vals = []
                for c in COLUMNS:
                    v = n["values"].get(c)
                    vals.append("null" if v is None else
                                f"{v:.1f}" if isinstance(v, float) else str(v))
                out.append("| " + " | ".join(
                    [name, n["state"], str(n.get("bdSeq", "")), str(n["births"]),
                     str(n["data"])] + vals + [f"{now - n['last']:.1f} s ago"]) + " |")
            return "\n".join(out)

    def route_table(self):
        """One row per route device: its node, id, route name (from its
        DBIRTH), state and route points."""
        with self.lock:
            head = ["node", "device", "route", "state", "DDATA"] + ROUTE_COLUMNS
            out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for name, n in sorted(self.nodes.items()):
                for dev, d in sorted(n["devices"].items(),
                                     key=lambda kv: int(kv[0].rsplit("-", 1)[-1])
                                     if kv[0].rsplit("-", 1)[-1].isdigit() else 0):
                    vals = []
                    for c in ROUTE_COLUMNS:
                        v = d["values"].get(c)
                        vals.append("null" if v is None else
                                    f"{v:.2f}" if isinstance(v, float) else str(v))
                    out.append("| " + " | ".join(
                        [name, dev, str(d["values"].get("Device Info/Route Name", "")),
                         d["state"], str(d["data"])] + vals) + " |")
            return "\n".join(out)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--kill", type=int, default=1)
    ap.add_argument("--routes", type=int, default=2, help="routes (devices) per node")
    ap.add_argument("--bin")
    a = ap.parse_args()
    if shutil.which("mosquitto") is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    binary = castpoint_bin(a.bin)
    work = tempfile.mkdtemp(prefix="castpoint-fleet-")
    broker = Broker(work)
    view = FleetView(broker.port)
    nodes = []
    try:
        for i in range(a.nodes):
            nodes.append(Node(binary, work, broker.port, f"router-{i + 1:02d}",
                              {"cpu_usage": "1s", "memory_usage": "1s"}, routes=a.routes))
        wait(lambda: sum(n["state"] == "ONLINE" for n in view.nodes.values()) == a.nodes,
             60, "every node's NBIRTH")
        wait(lambda: sum(d["state"] == "ONLINE" for n in view.nodes.values()
                         for d in n["devices"].values()) == a.nodes * a.routes,
             60, "every route's DBIRTH")
        time.sleep(a.seconds)  # let NDATA flow: this is a demo, not a test
        print(f"## Fleet '{GROUP}': {a.nodes} castpoint nodes on one broker "
              f"(from the broker alone)\n")
        print(view.table())
        if a.routes:
            print("\n## Routes: one Sparkplug device per route (DBIRTH/DDATA)\n")
            print(view.route_table())
        if a.kill:
            for n in nodes[:a.kill]:
                n.proc.send_signal(signal.SIGKILL)
            wait(lambda: sum(n["state"] == "OFFLINE" for n in view.nodes.values()) >= a.kill,
                 30, "the broker's NDEATH for the killed nodes")
            print(f"\n## After SIGKILL of {a.kill} node(s): the broker published their NDEATH\n")
            print(view.table())
            if a.routes:
                print()
                print(view.route_table())
    finally:
        view.close()
        for n in nodes:
            n.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
