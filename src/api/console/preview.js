// castpoint console: the route preview, a keyframe thumbnail refreshed every few seconds, decoded in the browser (WebCodecs) from the route's own HTTP-TS output — no ffmpeg, no server-side decoding.
//
// Why this way: a viewer of /stream/<path>.ts starts at a keyframe with
// PAT and PMT first (src/engine/join.rs), so the first video PES of a
// fresh request is a complete IDR access unit. The page reads just that
// much, aborts the request and hands the access unit to the browser's
// H.264 decoder. The cost is one short HTTP-TS viewer per refresh.

const REFRESH_MS = 5000;
const TIMEOUT_MS = 10000;
const MAX_BYTES = 8 << 20;

/** Demultiplexes MPEG-TS until the first complete H.264 access unit with an IDR. */
class Demux {
  constructor() {
    this.rest = new Uint8Array(0);
    this.pmt = -1;
    this.video = -1;
    this.codec = null;
    this.pes = null;
    this.seen = 0;
  }

  /** Feeds bytes; returns {au, codec} once a keyframe is complete, else null. Throws on unsupported codecs. */
  push(chunk) {
    this.seen += chunk.length;
    if (this.seen > MAX_BYTES) throw new Error("no H.264 keyframe in the first 8 MB of the stream");
    const b = new Uint8Array(this.rest.length + chunk.length);
    b.set(this.rest);
    b.set(chunk, this.rest.length);
    let i = 0;
    while (i + 188 <= b.length) {
      if (b[i] !== 0x47) {
        i++;
        continue;
      }
      const done = this.packet(b.subarray(i, i + 188));
      if (done) return done;
      i += 188;
    }
    this.rest = b.slice(i);
    return null;
  }

  packet(p) {
    const pid = ((p[1] & 0x1f) << 8) | p[2];
    const pusi = (p[1] & 0x40) !== 0;
    const afc = (p[3] >> 4) & 3;
    let s = 4;
    if (afc & 2) s += 1 + p[4];
    if (!(afc & 1) || s >= 188) return null;
    if (pid === 0 && pusi) this.pat(p, s);
    else if (pid === this.pmt && pusi) this.pmtSection(p, s);
    else if (pid === this.video) return this.videoPayload(p, s, pusi);
    return null;
  }

  section(p, s) {
    const sec = s + 1 + p[s];
    const len = ((p[sec + 1] & 0x0f) << 8) | p[sec + 2];
    return [sec, Math.min(sec + 3 + len - 4, 188)];
  }

  pat(p, s) {
    const [sec, end] = this.section(p, s);
    for (let x = sec + 8; x + 4 <= end; x += 4) {
      const prog = (p[x] << 8) | p[x + 1];
      if (prog !== 0) {
        this.pmt = ((p[x + 2] & 0x1f) << 8) | p[x + 3];
        return;
      }
    }
  }

  pmtSection(p, s) {
    const [sec, end] = this.section(p, s);
    const pil = ((p[sec + 10] & 0x0f) << 8) | p[sec + 11];
    for (let x = sec + 12 + pil; x + 5 <= end; ) {
      const type = p[x];
      const pid = ((p[x + 1] & 0x1f) << 8) | p[x + 2];
      if (type === 0x1b) {
        this.video = pid;
        return;
      }
      if (type === 0x24) throw new Error("the route carries HEVC: the preview decodes H.264 only");
      x += 5 + (((p[x + 3] & 0x0f) << 8) | p[x + 4]);
    }
  }

  videoPayload(p, s, pusi) {
    if (pusi) {
      const done = this.pes && this.finish();
      if (done) return done;
      // A new PES: skip its header (00 00 01, stream id, length, flags, header length).
      if (p[s] !== 0 || p[s + 1] !== 0 || p[s + 2] !== 1) {
        this.pes = null;
        return null;
      }
      this.pes = [p.slice(s + 9 + p[s + 8])];
    } else if (this.pes) {
      this.pes.push(p.slice(s));
    }
    return null;
  }

  finish() {
    const n = this.pes.reduce((a, x) => a + x.length, 0);
    const au = new Uint8Array(n);
    let o = 0;
    for (const x of this.pes) {
      au.set(x, o);
      o += x.length;
    }
    let idr = false;
    for (let i = 0; i + 3 < au.length; i++) {
      if (au[i] === 0 && au[i + 1] === 0 && au[i + 2] === 1) {
        const t = au[i + 3] & 0x1f;
        if (t === 5) idr = true;
        if (t === 7 && i + 6 < au.length) {
          const hex = (v) => v.toString(16).padStart(2, "0");
          this.codec = `avc1.${hex(au[i + 4])}${hex(au[i + 5])}${hex(au[i + 6])}`;
        }
      }
    }
    return idr && this.codec ? { au, codec: this.codec } : null;
  }
}

async function decode(au, codec) {
  const cfg = { codec, optimizeForLatency: true };
  const sup = await VideoDecoder.isConfigSupported(cfg);
  if (!sup.supported) throw new Error(`this browser cannot decode ${codec}`);
  let frame = null;
  let failed = null;
  const dec = new VideoDecoder({
    output: (f) => {
      if (frame) f.close();
      else frame = f;
    },
    error: (e) => (failed = e),
  });
  try {
    // No `description`: the chunk is Annex B with SPS/PPS in band.
    dec.configure(cfg);
    dec.decode(new EncodedVideoChunk({ type: "key", timestamp: 0, data: au }));
    await dec.flush();
  } finally {
    if (dec.state !== "closed") dec.close();
  }
  if (failed) throw failed;
  if (!frame) throw new Error("the decoder returned no picture");
  return frame;
}

export class Preview {
  constructor(canvas, info) {
    this.canvas = canvas;
    this.info = info;
    this.url = undefined;
    this.timer = null;
    this.ctl = null;
    this.frames = 0;
    this.stopped = false;
  }

  /** Follows the route document: the preview reads its first enabled HTTP-TS output. */
  setSource(doc, session) {
    this.session = session;
    if (!doc) return;
    const o = (doc.outputs || []).find((x) => x.type === "http" && x.enabled !== false);
    const url = o ? `/stream/${encodeURIComponent(o.path || doc.name)}.ts` : null;
    if (url === this.url) return;
    this.url = url;
    this.schedule(0);
  }

  schedule(ms) {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.timer = setTimeout(() => this.tick(), ms);
  }

  say(text, cls) {
    this.info.textContent = text;
    this.info.className = `small ${cls || "muted"}`;
  }

  async tick() {
    if (!this.url) {
      this.say('No preview: the route has no enabled HTTP-TS output (type = "http"), which the preview reads.');
      return;
    }
    if (!window.isSecureContext || typeof VideoDecoder === "undefined") {
      this.say(`No preview: browsers decode video in a page (WebCodecs) only over HTTPS or from localhost. Serve the console over HTTPS ([http] tls_cert) or watch ${location.origin}${this.url} with ffplay or VLC.`);
      return;
    }
    try {
      const started = performance.now();
      const { au, codec } = await this.grab();
      const frame = await decode(au, codec);
      const w = 320;
      const hgt = Math.round((w * frame.displayHeight) / frame.displayWidth) || 180;
      this.canvas.width = w;
      this.canvas.height = hgt;
      this.canvas.getContext("2d").drawImage(frame, 0, 0, w, hgt);
      const size = `${frame.displayWidth}×${frame.displayHeight}`;
      frame.close();
      this.frames += 1;
      this.canvas.dataset.frames = String(this.frames);
      this.canvas.dataset.at = String(Date.now());
      this.say(`Keyframe ${size} ${codec}, ${(au.length / 1024).toFixed(0)} KiB, fetched and decoded in ${Math.round(performance.now() - started)} ms at ${new Date().toLocaleTimeString()}; refreshed every ${REFRESH_MS / 1000} s from ${this.url}.`);
    } catch (e) {
      if (this.stopped) return;
      this.say(`Preview: ${e.message || e}`, "error");
    }
    this.schedule(REFRESH_MS);
  }

  async grab() {
    const ctl = new AbortController();
    this.ctl = ctl;
    const t = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const headers = this.session ? { authorization: `Bearer ${this.session.token}` } : {};
      const r = await fetch(this.url, { headers, signal: ctl.signal, cache: "no-store" });
      if (!r.ok) {
        let msg = `HTTP ${r.status}`;
        try {
          msg = (await r.json()).error || msg;
        } catch {
          // Not JSON: keep the status.
        }
        throw new Error(msg);
      }
      const reader = r.body.getReader();
      const d = new Demux();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the stream ended before a keyframe");
        const got = d.push(value);
        if (got) return got;
      }
    } catch (e) {
      if (e.name === "AbortError") throw new Error("no keyframe within 10 s (no signal?)");
      throw e;
    } finally {
      clearTimeout(t);
      ctl.abort();
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ctl) this.ctl.abort();
  }
}
