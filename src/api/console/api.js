// castpoint console: the session (JWT), REST calls and the live WebSocket feeds.
// Everything the console shows comes through here, from the same API any
// client uses; nothing is computed that the server did not report.

const KEY = "castpoint.session";

/** The logged-in session: {token, user, role} or null (anonymous). */
export let session = null;
try {
  session = JSON.parse(sessionStorage.getItem(KEY) || "null");
} catch {
  session = null;
}

export function setSession(s) {
  session = s;
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

const RANK = { viewer: 1, operator: 2, admin: 3 };

/** Whether the session's role reaches `role` (the server decides anyway). */
export function can(role) {
  return !!session && (RANK[session.role] || 0) >= RANK[role];
}

/** An API error with the server's message (`{"error": ..., "status": ...}`). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

/** fetch with the session's token; JSON in and out; throws ApiError. */
export async function api(method, path, body) {
  const headers = {};
  if (session) headers.authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!r.ok) {
    const msg = (data && data.error) || `HTTP ${r.status}`;
    if (r.status === 401 && session) onUnauthorized(msg);
    throw new ApiError(r.status, msg);
  }
  return data;
}

export const get = (p) => api("GET", p);
export const post = (p, b) => api("POST", p, b);

/** ws:// URL of a feed on this server, with the token (browsers cannot set headers on WebSockets). */
function wsUrl(path) {
  const u = new URL(path, location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (session) u.searchParams.set("access_token", session.token);
  return u.toString();
}

/**
 * A WebSocket that reconnects with backoff (0.5 s doubling to 10 s) and
 * tells its owner when it is (re)connected, so the owner resynchronises
 * (the points feed sends a full snapshot on every connect).
 */
export class Feed {
  constructor(path, onMessage, onState, onRefused) {
    this.path = path;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.onRefused = onRefused || (() => {});
    this.backoff = 500;
    this.closed = false;
    this.connect();
  }

  connect() {
    if (this.closed) return;
    const ws = new WebSocket(wsUrl(this.path));
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.backoff = 500;
      this.onState(true);
    };
    ws.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onMessage(m);
    };
    ws.onclose = () => {
      this.onState(false);
      if (this.closed) return;
      // A handshake that never opened may be a revoked or expired token
      // (browsers do not show a WebSocket's HTTP status): the owner asks
      // the API, whose 401 ends the session.
      if (!opened) this.onRefused();
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 10000);
    };
    // Errors are followed by close; the close handler retries.
    ws.onerror = () => {};
  }

  /** Drops the connection now; it reconnects (and resynchronises) as after any drop. */
  reconnect() {
    if (this.ws) this.ws.close();
  }

  send(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }
}

/** Human units. */
export function fmtBps(bps) {
  if (bps == null) return "—";
  if (bps >= 1e9) return `${(bps / 1e9).toFixed(2)} Gb/s`;
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mb/s`;
  if (bps >= 1e3) return `${(bps / 1e3).toFixed(0)} kb/s`;
  return `${bps} b/s`;
}

export function fmtDuration(s) {
  if (s == null) return "—";
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h ${m}m` : h ? `${h}h ${m}m` : `${m}m ${Math.floor(s % 60)}s`;
}
