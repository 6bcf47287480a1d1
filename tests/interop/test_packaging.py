"""The .deb: build it with packaging/build-deb.sh, lint it with lintian, install it with dpkg -i (as root) or unpack it, verify the systemd unit, and run the installed binary on the installed config as the service user."""
import gzip
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, castpoint_bin

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    out = tmp_path_factory.mktemp("deb")
    binary = pathlib.Path(castpoint_bin())
    # The test packages the debug binary the suite already built (a release
    # build would add minutes); the script strips it like a release one.
    prof = "dev" if binary.parent.name == "debug" else binary.parent.name
    r = sh(str(ROOT / "packaging" / "build-deb.sh"), cwd=ROOT,
           env={**os.environ, "PROFILE": prof, "NO_BUILD": "1", "OUT": str(out)})
    assert r.returncode == 0, r.stderr
    path = pathlib.Path(r.stdout.strip().splitlines()[-1])
    assert path.exists(), r.stdout
    return path


def field(deb, name):
    r = sh("dpkg-deb", "-f", str(deb), name)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_control_fields_and_dependencies(deb):
    assert field(deb, "Package") == "castpoint"
    deps = field(deb, "Depends")
    # Computed by dpkg-shlibdeps from the binary: libsrt is what the SRT
    # FFI links, so a machine without it gets it from apt.
    assert "libsrt1.5-openssl" in deps, deps
    assert "libc6" in deps and "adduser" in deps, deps
    assert field(deb, "Recommends") == "ffmpeg"
    r = sh("dpkg-deb", "--ctrl-tarfile", str(deb))
    assert r.returncode == 0


def test_contents(deb):
    listing = sh("dpkg-deb", "-c", str(deb)).stdout
    for f in ["./usr/bin/castpoint", "./etc/castpoint/castpoint.toml",
              "./lib/systemd/system/castpoint.service",
              "./usr/share/man/man1/castpoint.1.gz",
              "./usr/share/bash-completion/completions/castpoint",
              "./usr/share/zsh/vendor-completions/_castpoint",
              "./usr/share/fish/vendor_completions.d/castpoint.fish",
              "./usr/share/doc/castpoint/copyright",
              "./usr/share/doc/castpoint/examples/modbus-502.conf",
              "./usr/share/doc/castpoint/examples/prometheus/castpoint-alerts.yml",
              "./usr/share/doc/castpoint/examples/grafana-dashboard.json"]:
        assert f in listing, f"{f} missing:\n{listing}"
    # Files belong to root (dpkg-deb --root-owner-group), the config is
    # not world-readable (it may hold secrets).
    conf = [l for l in listing.splitlines() if l.endswith("./etc/castpoint/castpoint.toml")][0]
    assert conf.startswith("-rw-r----- root/root"), conf
    assert "conffiles" in sh("dpkg-deb", "-I", str(deb)).stdout


@pytest.mark.skipif(shutil.which("lintian") is None, reason="needs Debian's lintian")
def test_lintian_is_clean(deb):
    r = sh("lintian", "--tag-display-limit", "0", str(deb))
    tags = [l for l in r.stdout.splitlines() if l[:2] in ("E:", "W:")]
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


@pytest.fixture(scope="module")
def installed(deb, tmp_path_factory):
    """The package installed for real with dpkg -i when the test runs as root
    on a machine without castpoint (CI), else unpacked into a scratch root.
    Yields the root ("/" or the scratch dir); purges afterwards."""
    real = os.geteuid() == 0 and sh("dpkg-query", "-W", "castpoint").returncode != 0
    if real:
        r = sh("dpkg", "-i", str(deb))
        assert r.returncode == 0, r.stdout + r.stderr
        try:
            yield pathlib.Path("/")
        finally:
            r = sh("dpkg", "--purge", "castpoint")
            assert r.returncode == 0, r.stdout + r.stderr
            # Purge takes the service user and its state with it.
            assert sh("getent", "passwd", "castpoint").returncode != 0
            assert not pathlib.Path("/var/lib/castpoint").exists()
    else:
        root = tmp_path_factory.mktemp("root")
        assert sh("dpkg", "-x", str(deb), str(root)).returncode == 0
        yield root


def test_installed_binary_checks_the_installed_config(installed):
    exe = installed / "usr/bin/castpoint"
    conf = installed / "etc/castpoint/castpoint.toml"
    assert 'data_dir = "/var/lib/castpoint"' in conf.read_text()
    r = sh(str(exe), "check-config", "--config", str(conf))
    assert r.returncode == 0 and ": ok (" in r.stdout, r.stdout + r.stderr
    v = sh(str(exe), "--version").stdout
    assert v.startswith("castpoint ") and "(commit " in v, v


def test_man_page_and_completions(installed):
    man = gzip.decompress((installed / "usr/share/man/man1/castpoint.1.gz").read_bytes()).decode()
    man = man.replace("\\-", "-")  # roff escapes hyphens
    assert man.startswith(".ie") or ".TH castpoint 1" in man
    for sub in ["check-config", "status", "completions", "export"]:
        assert sub in man, sub
    if shutil.which("man"):
        r = sh("man", "-l", str(installed / "usr/share/man/man1/castpoint.1.gz"),
               env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
        assert r.returncode == 0 and "castpoint" in r.stdout, r.stderr
    bash = installed / "usr/share/bash-completion/completions/castpoint"
    assert sh("bash", "-n", str(bash)).returncode == 0
    # The completion knows the real subcommands: it comes from clap.
    r = sh("bash", "-c", f"source {bash}; COMP_WORDS=(castpoint che); COMP_CWORD=1; "
           "_castpoint castpoint che castpoint; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert "check-config" in r.stdout.split(), r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_verifies_and_is_hardened(installed):
    unit = installed / "lib/systemd/system/castpoint.service"
    text = unit.read_text()
    for opt in ["User=castpoint", "StateDirectory=castpoint", "NoNewPrivileges=yes",
                "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                "CapabilityBoundingSet=\n"]:
        assert opt in text, opt
    if installed == pathlib.Path("/"):
        r = sh("systemd-analyze", "verify", str(unit))
    else:
        # Unpacked only: point ExecStart at the unpacked binary so verify
        # can check it is executable; skip the man page lookup.
        tmp = pathlib.Path(tempfile.mkdtemp()) / "castpoint.service"
        tmp.write_text(text.replace("/usr/bin/castpoint", str(installed / "usr/bin/castpoint")))
        r = sh("systemd-analyze", "verify", "--man=no", str(tmp))
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    r = sh("systemd-analyze", "security", "--offline=yes", "--threshold=50", str(unit))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Overall exposure level" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the service user: needs root")
def test_service_user_runs_the_installed_config_to_ready(installed):
    if installed != pathlib.Path("/"):
        pytest.skip("package not installed for real")
    # What systemd's StateDirectory= does before ExecStart.
    state = pathlib.Path("/var/lib/castpoint")
    sh("install", "-d", "-o", "castpoint", "-g", "castpoint", "-m", "0700", str(state))
    p = subprocess.Popen(
        # setpriv execs the server itself (runuser would stay as a parent
        # that writes its own lines on SIGTERM).
        ["setpriv", "--reuid", "castpoint", "--regid", "castpoint", "--init-groups",
         "/usr/bin/castpoint", "run",
         "--config", "/etc/castpoint/castpoint.toml", "--log-format", "json",
         "--http", "127.0.0.1:0", "--bacnet", "127.0.0.1:0",
         "--modbus", "127.0.0.1:0", "--rtmp", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        lines = []
        for line in p.stdout:
            lines.append(line.strip())
            if line.startswith(("ready", "degraded")):
                break
        assert lines and lines[-1] == "ready", lines
        http = [l.split()[2] for l in lines if l.startswith("listening http ")][0]
        r = sh(str(pathlib.Path("/usr/bin/castpoint")), "status", "--url", f"http://{http}")
        assert r.returncode == 0 and "routes: 1 (primary demo)" in r.stdout, r.stdout + r.stderr
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    # --log-format json: every stderr line is one JSON object.
    import json
    for l in err.splitlines():
        try:
            json.loads(l)
        except ValueError:
            pytest.fail(f"not a JSON log line: {l!r}")
    assert (state / "castpoint.db").exists()
    assert oct((state / "castpoint.db").stat().st_mode & 0o777) == "0o600"
