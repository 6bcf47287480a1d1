// castpoint console: start-up, login, the live store fed by the WebSockets, and the page router (#/overview, #/routes, #/routes/NAME, #/points, #/audit, #/users).
import { session, setSession, can, get, post, Feed, setUnauthorizedHandler } from "./api.js";
import { h, clear, VIEWS } from "./views.js";

/** 5 minutes of 1 s samples per route, kept in the page since it opened. */
const RATE_SAMPLES = 300;

/** Everything live the views read. */
export const store = {
  info: null,
  points: new Map(),
  router: null,
  routeDocs: null,
  primary: null,
  // Route point blocks by route name: {slot, ids}; their points are in `points` too (with `route`).
  blocks: new Map(),
  rates: new Map(),
  dash: null,
  events: [],
  // `GET /api/alarms` (active or unacknowledged), refetched when the feed
  // reports an alarm transition or acknowledgement; null until loaded or
  // when alarms are not running. The route tiles count theirs from it.
  alarms: null,
  feeds: { points: false, dashboard: false },
  pointsFeed: null,
  dashFeed: null,
  // "Continue read-only" holds for the tab, like a login.
  anon: sessionStorage.getItem("castpoint.anon") === "1",
};

let current = null;
let dirty = false;

/** Asks the current view to redraw its live parts (at most once a frame). */
export function changed() {
  if (dirty) return;
  dirty = true;
  requestAnimationFrame(() => {
    dirty = false;
    if (current && current.update) current.update();
    renderStatus();
  });
}

function onPoints(m) {
  switch (m.type) {
    case "snapshot": {
      // The snapshot holds the server's points; route blocks come from
      // /api/routes/{r}/points (refetched with the route documents).
      const blocks = [...store.points.values()].filter((p) => p.route);
      store.points = new Map(m.points.map((p) => [p.id, p]));
      for (const p of blocks) if (!store.points.has(p.id)) store.points.set(p.id, p);
      break;
    }
    case "point": {
      const p = store.points.get(m.id);
      if (p) {
        p.value = m.value;
        p.status = m.status;
        p.updated = m.updated;
        if (m.reason) p.reason = m.reason;
        else delete p.reason;
        if ("state" in m && m.state != null) p.state = m.state;
        else if (m.value == null && (p.states || []).includes("N/A")) p.state = "N/A";
        else delete p.state;
      }
      break;
    }
    case "write":
      // The priority array changed: fetch that point again.
      refreshPoint(m.point);
      break;
    case "stats":
      onRouter(m.router);
      break;
    case "alarm":
    case "alarm-ack":
    case "alarms":
      loadAlarms();
      return;
    case "event":
      store.events.unshift(m);
      store.events.length = Math.min(store.events.length, 100);
      loadRoutes();
      break;
    default:
      return;
  }
  changed();
}

function onRouter(r) {
  store.router = r;
  const now = Date.now();
  for (const rt of r.routes || []) {
    let s = store.rates.get(rt.name);
    if (!s) store.rates.set(rt.name, (s = { t: [], inp: [], out: [] }));
    const act = rt.active_input != null ? rt.inputs[rt.active_input] : null;
    const out = rt.outputs
      .filter((o) => o.kind !== "record")
      .reduce((a, o) => a + o.bitrate_bps, 0);
    s.t.push(now);
    s.inp.push(act ? act.bitrate_bps : 0);
    s.out.push(out);
    if (s.t.length > RATE_SAMPLES) {
      s.t.shift();
      s.inp.shift();
      s.out.shift();
    }
  }
}

const pending = new Set();
function refreshPoint(id) {
  if (!id || pending.has(id)) return;
  pending.add(id);
  setTimeout(async () => {
    pending.delete(id);
    try {
      const p = await get(`/api/points/${encodeURIComponent(id)}`);
      store.points.set(p.id, p);
      changed();
    } catch {
      // The feed resynchronises on reconnect.
    }
  }, 100);
}

let alarmsTimer = null;
/** The active alarms list; a burst of transitions costs one request. */
export function loadAlarms() {
  clearTimeout(alarmsTimer);
  alarmsTimer = setTimeout(async () => {
    try {
      store.alarms = await get("/api/alarms");
    } catch {
      // 503: alarms are not running; the tiles then show no alarm badge.
      store.alarms = null;
    }
    changed();
  }, 150);
}

let routesTimer = null;
/** Route documents (desired state); refetched after router events and own changes. */
export function loadRoutes() {
  clearTimeout(routesTimer);
  routesTimer = setTimeout(async () => {
    try {
      const r = await get("/api/routes");
      store.routeDocs = r.routes;
      store.primary = r.primary;
      await loadBlocks(r.routes);
      changed();
    } catch {
      // Shown by the views as "not loaded".
    }
  }, 150);
}

/** Every route's point block (a route without one answers 404 and has none). */
async function loadBlocks(docs) {
  const got = await Promise.all(
    docs.map((d) => get(`/api/routes/${encodeURIComponent(d.name)}/points`).catch(() => null)),
  );
  for (const [id, p] of store.points) if (p.route) store.points.delete(id);
  const blocks = new Map();
  got.forEach((b, i) => {
    if (!b) return;
    blocks.set(docs[i].name, { slot: b.slot, ids: b.points.map((p) => p.id) });
    for (const p of b.points) store.points.set(p.id, p);
  });
  store.blocks = blocks;
}

function startFeeds() {
  stopFeeds();
  store.pointsFeed = new Feed("/api/ws", onPoints, (up) => {
    store.feeds.points = up;
    if (up) store.connects = (store.connects || 0) + 1;
    // Reconnected: the snapshot resynchronises points; documents and the
    // alarm list too (transitions may have been missed while down).
    if (up) {
      loadRoutes();
      loadAlarms();
    }
    changed();
  }, checkSession);
  store.dashFeed = new Feed(
    "/ws/dashboard",
    (m) => {
      if (m.type === "stats") {
        store.dash = m.data;
        changed();
      }
    },
    (up) => {
      store.feeds.dashboard = up;
      changed();
    },
  );
}

/** A feed could not connect: a 401 from the API ends the session (see setUnauthorizedHandler). */
function checkSession() {
  if (session) get("/stats").catch(() => {});
}

function stopFeeds() {
  if (store.pointsFeed) store.pointsFeed.close();
  if (store.dashFeed) store.dashFeed.close();
  store.pointsFeed = store.dashFeed = null;
}

function renderStatus() {
  const el = document.getElementById("conn");
  if (!el) return;
  const up = store.feeds.points && store.feeds.dashboard;
  el.textContent = up ? "live" : "reconnecting…";
  el.className = up ? "conn up" : "conn down";
  el.dataset.connects = String(store.connects || 0);
}

// ------------------------------------------------------------------ pages

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [page, ...rest] = hash.split("/");
  return { page, arg: rest.map(decodeURIComponent).join("/") };
}

function show() {
  const app = document.getElementById("app");
  if (current && current.unmount) current.unmount();
  current = null;
  clear(app);
  if (!session && !(store.info && store.info.anonymous_read && store.anon)) {
    stopFeeds();
    app.append(loginPage());
    return;
  }
  if (!store.pointsFeed) startFeeds();
  app.append(shell());
  const { page, arg } = route();
  const key = page === "routes" && arg ? "route" : page;
  const view = VIEWS[key] || VIEWS.overview;
  if (view.role && !can(view.role)) {
    document.getElementById("main").append(h("p", { class: "note" }, `This page needs the ${view.role} role.`));
    return;
  }
  current = view.mount(document.getElementById("main"), arg, store);
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === (key === "route" ? "routes" : key));
  }
  changed();
}

function shell() {
  const who = session ? `${session.user} (${session.role})` : "anonymous (read-only)";
  const nav = [
    ["overview", "Overview"],
    ["routes", "Routes"],
    ["points", "Points"],
    ["audit", "Audit"],
    ["users", "Users"],
    ["links", "API & exports"],
  ]
    // What the role cannot use is not offered (the page itself says so too).
    .filter(([p]) => !(VIEWS[p] && VIEWS[p].role && !can(VIEWS[p].role)))
    .map(([p, t]) => h("a", { href: `#/${p}`, "data-page": p }, t));
  return h(
    "div",
    { class: "shell" },
    h(
      "header",
      {},
      h("span", { class: "brand" }, "castpoint"),
      h("nav", {}, ...nav),
      h("span", {
        id: "conn",
        class: "conn down",
        title: "Live feeds (WebSockets /api/ws and /ws/dashboard); click to reconnect now",
        onclick: () => {
          for (const f of [store.pointsFeed, store.dashFeed]) if (f) f.reconnect();
        },
      }, "connecting…"),
      h("span", { class: "who", id: "who" }, who),
      h(
        "button",
        {
          id: "logout",
          onclick: () => {
            setSession(null);
            store.anon = false;
            sessionStorage.removeItem("castpoint.anon");
            stopFeeds();
            show();
          },
        },
        session ? "Log out" : "Log in",
      ),
    ),
    noUserBanner(),
    h("main", { id: "main" }),
  );
}

function noUserBanner() {
  if (!store.info || store.info.users || !store.info.auth) return "";
  return h(
    "div",
    { class: "banner", id: "no-user" },
    "No user exists yet: the console is read-only and the API takes changes from this machine (loopback) only. Add an administrator on the server with ",
    h("code", {}, store.info.add_user),
    " (it asks for the password on stdin), then log in here.",
  );
}

function loginPage() {
  // Kept until the next login, not consumed by this render: the login page
  // may be drawn again right away (a hash change, a second refused call),
  // and the reason must still be there (this was the flaky test's race).
  const err = h("p", { class: "error", id: "login-error" }, store.loginMessage || "");
  const user = h("input", { id: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (e) => {
        e.preventDefault();
        err.textContent = "";
        try {
          const r = await post("/api/auth/login", { username: user.value, password: pass.value });
          setSession({ token: r.token, role: r.role, user: user.value });
          store.loginMessage = "";
          show();
        } catch (x) {
          err.textContent = x.message;
        }
      },
    },
    h("h1", {}, "castpoint"),
    h("label", {}, "User", user),
    h("label", {}, "Password", pass),
    h("button", { type: "submit", id: "login" }, "Log in"),
    err,
  );
  const i = store.info;
  if (i && i.auth && !i.users) {
    form.append(
      h(
        "div",
        { class: "banner", id: "no-user" },
        "No user exists yet. On the server run ",
        h("code", {}, i.add_user),
        " (the password is read from stdin; roles: viewer, operator, admin), then log in here.",
      ),
    );
  }
  if (i && i.anonymous_read) {
    form.append(
      h(
        "button",
        {
          type: "button",
          class: "link",
          id: "anon",
          onclick: () => {
            store.anon = true;
            store.loginMessage = "";
            sessionStorage.setItem("castpoint.anon", "1");
            show();
          },
        },
        "Continue read-only without logging in",
      ),
    );
  }
  return form;
}

setUnauthorizedHandler((msg) => {
  // Expired or revoked token: back to the login page, saying why.
  setSession(null);
  stopFeeds();
  store.loginMessage = `Your session ended (${msg}): log in again.`;
  show();
});

async function start() {
  try {
    store.info = await get("/api/auth/info");
  } catch {
    store.info = null;
  }
  window.addEventListener("hashchange", show);
  show();
}

start();
