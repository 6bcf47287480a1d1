"""pytest fixtures for interop tests: spawn the real castpoint binary on ephemeral loopback ports and read them from its stdout."""
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Every temporary file and directory the tests make (data dirs, configs,
# captures) goes under one directory per run, removed when the run ends:
# they were left in /tmp, about 45 data dirs a run.
_RUN_DIR = None


def pytest_configure(config):
    global _RUN_DIR
    _RUN_DIR = tempfile.mkdtemp(prefix="castpoint-interop-run-")
    # Searchable by others, as /tmp is: mosquitto drops root to its own
    # user and must reach the TLS test's files. What is inside keeps its
    # own modes (each mkdtemp is 0700).
    os.chmod(_RUN_DIR, 0o755)
    tempfile.tempdir = _RUN_DIR


def pytest_unconfigure(config):
    tempfile.tempdir = None
    if _RUN_DIR:
        shutil.rmtree(_RUN_DIR, ignore_errors=True)


def base_config_text():
    """castpoint.toml without its demo route: protocol tests want points that
    change only when the test changes them (no engine writing statuses, no
    System Restart handling relinquishing slots)."""
    text = (ROOT / "castpoint.toml").read_text()
    marker = "# ------------------------------------------------------------------ routes"
    text = text.split(marker, 1)[0]
    text = text.replace('primary_route = "demo"\n', "")
    # Protocol tests decide anonymous access themselves.
    return text.replace("anonymous_read = true\n", "")


def castpoint_bin():
    """The binary built by `cargo build` (CASTPOINT_BIN overrides)."""
    env = os.environ.get("CASTPOINT_BIN")
    if env:
        return env
    for prof in ("debug", "release"):
        p = ROOT / "target" / prof / "castpoint"
        if p.exists():
            return str(p)
    raise RuntimeError("build castpoint first (cargo build)")


class Server:
    """A running castpoint with its bound addresses: http, bacnet, modbus as (host, port)."""

    def __init__(self, extra_args=(), config=None, data=None):
        # Default: no telemetry sampler, so values only change when a test
        # changes them (reads over two protocols are then comparable).
        if config is None:
            config = pathlib.Path(__file__).parent / "quiet.toml"
        # `data`: an existing data dir (a restart keeps its SQLite state).
        self.data = data or tempfile.mkdtemp(prefix="castpoint-interop-")
        args = [castpoint_bin(), "run",
                "--http", "127.0.0.1:0", "--bacnet", "127.0.0.1:0",
                "--modbus", "127.0.0.1:0", "--rtmp", "127.0.0.1:0",
                "--data-dir", self.data]
        if config:
            args += ["--config", str(config)]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.addrs = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("castpoint exited before it was ready")
            parts = line.split()
            if parts and parts[0] == "listening":
                host, port = parts[2].rsplit(":", 1)
                self.addrs[parts[1]] = (host, int(port))
            elif parts == ["ready"]:
                return
            elif line.startswith("degraded:"):
                # A configured part did not start: fail now, with why.
                self.proc.kill()
                raise RuntimeError(f"castpoint started degraded: {line.strip()}")
        raise RuntimeError("castpoint did not print 'ready' in 30 s")

    @property
    def http_base(self):
        h, p = self.addrs["http"]
        return f"http://{h}:{p}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_server():
    s = Server()
    yield s
    s.stop()
