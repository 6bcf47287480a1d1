"""Engine interop through the real binary: the example config validates, route errors name their key, and ffprobe decodes the HTTP-TS output fed by ffmpeg over UDP."""
import socket
import subprocess
import tempfile
import time
import urllib.request

from conftest import ROOT, Server, castpoint_bin


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_example_config_with_every_io_type_validates():
    r = subprocess.run([castpoint_bin(), "check-config", "--config",
                        str(ROOT / "examples" / "all-io.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_route_errors_name_the_key():
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write('[[route]]\nname = "a"\n[[route.output]]\ntype = "srt"\n'
                'mode = "listener"\naddr = "127.0.0.1:1"\npbkeylen = 20\n')
    r = subprocess.run([castpoint_bin(), "check-config", "--config", f.name],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "route[0].output[0].pbkeylen" in r.stderr


def test_ffprobe_decodes_http_ts_output_of_the_real_binary():
    port = free_udp_port()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[[route]]\nname = "live"\n[[route.input]]\ntype = "udp"\n'
                f'bind = "127.0.0.1:{port}"\n[[route.output]]\ntype = "http"\n')
    srv = Server(config=f.name)
    ff = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                           "testsrc=size=320x240:rate=25", "-c:v", "libx264", "-preset",
                           "ultrafast", "-g", "25", "-t", "20", "-f", "mpegts",
                           f"udp://127.0.0.1:{port}?pkt_size=1316"])
    try:
        url = f"{srv.http_base}/stream/live.ts"
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.read(188 * 10):
                        break
            except OSError:
                pass
            assert time.time() < deadline, "no HTTP-TS data"
            time.sleep(0.3)
        p = subprocess.run(["ffprobe", "-v", "warning", "-read_intervals", "%+4",
                            "-select_streams", "v:0", "-count_packets", "-show_entries",
                            "stream=nb_read_packets", "-of", "csv=p=0", url],
                           capture_output=True, text=True, timeout=30)
        counts = [int(x.strip(",")) for x in p.stdout.split() if x.strip(",").isdigit()]
        assert counts and counts[0] >= 50, p.stdout
        assert "continuity" not in p.stderr.lower()
        with urllib.request.urlopen(f"{srv.http_base}/api/points/connected_viewers") as r:
            assert r.status == 200
    finally:
        ff.kill()
        ff.wait()
        srv.stop()
