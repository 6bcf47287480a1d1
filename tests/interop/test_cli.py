"""The operator's command line: --version with the git commit (also in /health and castpoint_build_info), `castpoint status` against a running server, completions and man page, --log-format json."""
import json
import re
import shutil
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import ROOT, Server, castpoint_bin


def cli(*args, **kw):
    return subprocess.run([castpoint_bin(), *args], capture_output=True, text=True, **kw)


def git_head():
    if shutil.which("git") is None:
        return None
    r = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def test_version_names_the_commit_everywhere(server):
    out = cli("--version").stdout.strip()
    m = re.fullmatch(r"castpoint (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}|unknown)\)", out)
    assert m, out
    head = git_head()
    if head:
        assert m.group(2) == head, (out, head)
    health = json.load(urllib.request.urlopen(server.http_base + "/health"))
    assert health["version"] == m.group(1) and health["commit"] == m.group(2), health
    metrics = urllib.request.urlopen(server.http_base + "/metrics").read().decode()
    line = f'castpoint_build_info{{version="{m.group(1)}",commit="{m.group(2)}"}} 1'
    assert line in metrics.splitlines(), metrics[:500]


def test_status_summarises_a_running_server():
    s = Server(config=ROOT / "castpoint.toml")
    try:
        r = cli("status", "--url", s.http_base)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        # The server's 23 points plus the demo route's block.
        block = json.load(urllib.request.urlopen(s.http_base + "/api/routes/demo/points"))
        n = 23 + len(block["points"])
        assert out.startswith("castpoint ") and f": ok ({n} points)" in out.splitlines()[0], out
        assert "routes: 1 (primary demo)" in out, out
        # The demo route's four outputs, each with its state.
        for name in ["http web-ts", "hls web-hls", "udp lan-udp", "record archive  off"]:
            assert name in out, (name, out)
        assert "points out of order:" in out
        assert "alarms:" in out
    finally:
        s.stop()
    # Nothing listening: a clear error and a failing exit code.
    r = cli("status", "--url", s.http_base)
    assert r.returncode == 1 and "is castpoint running?" in r.stderr, r.stderr
    r = cli("status", "--url", "https://127.0.0.1:1")
    assert r.returncode == 1 and "curl" in r.stderr


@pytest.mark.parametrize("shell,needle", [("bash", "complete -F _castpoint"),
                                          ("zsh", "#compdef castpoint"),
                                          ("fish", "complete -c castpoint"),
                                          ("elvish", "castpoint"),
                                          ("powershell", "castpoint")])
def test_completions(shell, needle):
    r = cli("completions", shell)
    assert r.returncode == 0 and needle in r.stdout, r.stderr
    assert "check-config" in r.stdout


def test_generated_documents_survive_a_closed_pipe():
    # `castpoint completions bash | head -1` must not panic on EPIPE.
    for args in (["completions", "bash"], ["man"]):
        p = subprocess.Popen([castpoint_bin(), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.read(10)
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=10) == 0 and "panicked" not in err, err


def test_json_logs_are_one_object_per_line():
    # conftest's Server discards stderr: start one here.
    data = tempfile.mkdtemp(prefix="castpoint-interop-")
    p = subprocess.Popen([castpoint_bin(), "run", "--log-format", "json",
                          "--http", "127.0.0.1:0", "--bacnet", "127.0.0.1:0",
                          "--modbus", "127.0.0.1:0", "--rtmp", "127.0.0.1:0",
                          "--data-dir", data],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith(("ready", "degraded")):
            break
    p.terminate()
    _, err = p.communicate(timeout=30)
    lines = err.splitlines()
    assert lines, "no log lines"
    for l in lines:
        o = json.loads(l)
        assert {"timestamp", "level", "fields", "target"} <= set(o), o
    assert any(json.loads(l)["fields"].get("message") == "shutting down" for l in lines)
    assert "\x1b[" not in err


def test_bind_overrides_are_checked_like_the_file():
    """`run --http X --modbus X` (or a [::] bind beside an IPv4 one of the
    port) is refused before anything binds, exit 2, as check-config refuses
    the same binds in a file (before: the overrides skipped the check and
    the server started half-bound)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with tempfile.TemporaryDirectory() as d:
        for flags in (["--http", f"127.0.0.1:{port}", "--modbus", f"127.0.0.1:{port}"],
                      ["--http", f"[::]:{port}", "--modbus", f"127.0.0.1:{port}"]):
            r = cli("run", "--data-dir", d, "--bacnet", "127.0.0.1:0",
                    "--rtmp", "127.0.0.1:0", *flags, timeout=60)
            assert r.returncode == 2, (flags, r.returncode, r.stderr[-2000:])
            assert "is also bound by http.bind" in r.stderr, r.stderr[-2000:]
            assert "ready" not in r.stdout
