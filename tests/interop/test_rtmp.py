"""RTMP ingest against the real binary: `listening rtmp ADDR` on stdout, ffmpeg publishing like OBS, ffprobe reading the HTTP-TS output; a wrong key refused."""
import json
import subprocess
import tempfile
import time
import urllib.request

from conftest import Server

CONFIG = '''
[[route]]
name = "obs"
[[route.input]]
type = "rtmp"
key = "interop-key"
[[route.output]]
type = "http"
'''


def publish(addr, key, secs):
    host, port = addr
    return subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=320x180:rate=25", "-f", "lavfi", "-i", "sine", "-t", str(secs),
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
         "-c:a", "aac", "-f", "flv", f"rtmp://{host}:{port}/live/{key}"],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_obs_like_publish_decodes_from_http_ts_output():
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CONFIG)
    srv = Server(config=f.name)
    good = publish(srv.addrs["rtmp"], "interop-key", 20)
    try:
        assert srv.addrs["rtmp"][0] == "127.0.0.1"
        wrong = publish(srv.addrs["rtmp"], "wrong-key", 5)
        assert wrong.wait(timeout=20) != 0
        url = f"{srv.http_base}/stream/obs.ts"
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
        p = subprocess.run(["ffprobe", "-v", "warning", "-read_intervals", "%+3",
                            "-count_packets", "-show_entries",
                            "stream=codec_name,nb_read_packets", "-of", "compact", url],
                           capture_output=True, text=True, timeout=30)
        assert "codec_name=h264" in p.stdout and "codec_name=aac" in p.stdout, p.stdout
        assert "continuity" not in p.stderr.lower(), p.stderr
        with urllib.request.urlopen(f"{srv.http_base}/api/routes/obs") as r:
            body = r.read().decode()
        assert "interop-key" not in body, "the stream key is write-only"
        inp = json.loads(body)["stats"]["inputs"][0]
        assert inp["kind"] == "rtmp" and inp["clients"] == 1, inp
        assert inp["peer"].startswith("127.0.0.1:"), inp
        assert inp["bitrate_bps"] > 0, inp
    finally:
        good.kill()
        good.wait()
        srv.stop()


def test_ffmpeg_relay_of_ts_with_adts_aac_is_accepted():
    """Issue 17 item 1: `ffmpeg -re -i src.ts -c copy -f flv rtmp://...` (Debian's
    ffmpeg 5.1 sends an empty AAC sequence header first) publishes; the
    HTTP-TS output decodes as H.264 + AAC and the relay exits cleanly."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CONFIG)
    tmp = tempfile.mkdtemp(prefix="castpoint-relay-")
    src = f"{tmp}/src.ts"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=25", "-f", "lavfi", "-i", "sine",
                    "-t", "12", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
                    "-c:a", "aac", "-f", "mpegts", src], check=True, timeout=60)
    srv = Server(config=f.name)
    host, port = srv.addrs["rtmp"]
    relay = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-i", src, "-c", "copy", "-f", "flv",
         f"rtmp://{host}:{port}/live/interop-key"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"{srv.http_base}/stream/obs.ts"
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.read(188 * 10):
                        break
            except OSError:
                pass
            assert relay.poll() is None, f"relay ended: {relay.stderr.read()}"
            assert time.time() < deadline, "no HTTP-TS data"
            time.sleep(0.3)
        p = subprocess.run(["ffprobe", "-v", "warning", "-read_intervals", "%+3",
                            "-count_packets", "-show_entries",
                            "stream=codec_name,nb_read_packets", "-of", "compact", url],
                           capture_output=True, text=True, timeout=30)
        assert "codec_name=h264" in p.stdout and "codec_name=aac" in p.stdout, p.stdout
        assert relay.wait(timeout=30) == 0, relay.stderr.read()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
        srv.stop()
