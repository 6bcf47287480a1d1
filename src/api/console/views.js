// castpoint console: the pages. Each view mounts once and redraws only its live parts on update(), so forms being edited are never replaced under the user.
import { can, get, post, api, fmtBps, fmtDuration, session } from "./api.js";
import { loadRoutes } from "./app.js";
import { Preview } from "./preview.js";

// ------------------------------------------------------------------ helpers

/** Creates an element: h("div", {class: "x", onclick: f}, child, "text"). */
export function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v == null) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "checked" || k === "value" || k === "disabled") e[k] = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids.flat()) {
    if (c === "" || c == null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function clear(e) {
  while (e.firstChild) e.firstChild.remove();
}

function replace(e, ...kids) {
  clear(e);
  for (const c of kids.flat()) if (c !== "" && c != null) e.append(c instanceof Node ? c : String(c));
}

/** A one-line result/error area for write actions. */
function notice() {
  const e = h("p", { class: "notice", role: "status" });
  e.ok = (t) => {
    e.className = "notice ok";
    e.textContent = t;
  };
  e.fail = (t) => {
    e.className = "notice error";
    e.textContent = t;
  };
  return e;
}

/** Runs an API action, reporting its result or the server's error text. */
async function act(note, what, f) {
  try {
    await f();
    if (note) note.ok(`${what}: done`);
    loadRoutes();
    return true;
  } catch (x) {
    if (note) note.fail(`${what}: ${x.message}`);
    return false;
  }
}

/** A switch's change handler: runs `f(on)`; a refused change puts the switch back. */
function flip(note, what, f) {
  return async (e) => {
    const box = e.target;
    const on = box.checked;
    if (!(await act(note, `${what} ${on ? "on" : "off"}`, () => f(on)))) box.checked = !on;
  };
}

/**
 * A point switch's change handler: writes the point and shows what the
 * point now says. A write at the REST priority may be outranked (a BACnet
 * or Modbus write at a higher priority holds): the switch then shows the
 * point's real value and the note says which level holds it.
 */
function pointFlip(store, note, what, write) {
  return async (e) => {
    const box = e.target;
    const want = box.checked;
    try {
      const p = await write(want);
      const old = store.points.get(p.id);
      if (old && old.route && !p.route) p.route = old.route;
      store.points.set(p.id, p);
      box.checked = p.value === true;
      if (p.value === want) note.ok(`${what} ${want ? "on" : "off"}: done`);
      else note.fail(`${what} ${want ? "on" : "off"}: written at the REST priority, but level ${p.level} holds ${p.value} (see its priority array on Points)`);
      loadRoutes();
    } catch (x) {
      box.checked = !want;
      note.fail(`${what} ${want ? "on" : "off"}: ${x.message}`);
    }
  };
}

/** An SVG sparkline of up to 300 samples. */
function sparkline(values, cls) {
  const w = 160;
  const ht = 32;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
  svg.setAttribute("class", `spark ${cls || ""}`);
  if (values.length > 1) {
    // Headroom above the peak, so a steady rate is not drawn on the border.
    const max = Math.max(...values, 1) * 1.25;
    const pts = values
      .map((v, i) => `${((i / (values.length - 1)) * w).toFixed(1)},${(ht - 2 - (v / max) * (ht - 4)).toFixed(1)}`)
      .join(" ");
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    pl.setAttribute("points", pts);
    svg.append(pl);
  }
  return svg;
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || text.toLowerCase().replace(/[^a-z]/g, "")}` }, text);
}

function pointValue(p) {
  if (!p) return "—";
  if (p.value == null) return p.state || "—";
  if (p.state) return p.state;
  if (typeof p.value === "boolean") return p.value ? "true" : "false";
  const v = typeof p.value === "number" ? +p.value.toFixed(Math.abs(p.value) >= 100 ? 0 : 2) : p.value;
  return p.unit ? `${v} ${p.unit}` : `${v}`;
}

function writePoint(id, value, priority) {
  const body = { value };
  if (priority) body.priority = priority;
  return post(`/api/points/${encodeURIComponent(id)}`, body);
}

// ------------------------------------------------------------------ route blocks

/** A route's block point `tid` (output `n`): undefined without a block (docs/route-points.md). */
export function rpoint(store, route, tid, n) {
  const b = store.blocks && store.blocks.get(route);
  return b ? store.points.get(`route.${b.slot}.${tid}${n ? `.${n}` : ""}`) : undefined;
}

/** The block's output number of the route's output `name` (its position in the route's outputs). */
function outputNo(store, route, name) {
  const b = store.blocks && store.blocks.get(route);
  if (!b) return null;
  for (const id of b.ids) {
    const p = store.points.get(id);
    if (p && p.route && p.route.output && p.route.output_name === name) return p.route.output;
  }
  return null;
}

/** Commands a route point by template id, as any REST client would (at the REST priority). */
function writeRoutePoint(route, tid, value) {
  return post(`/api/routes/${encodeURIComponent(route)}/points/${tid}`, { value });
}

const stateText = (p) => (p && p.value != null && p.state ? p.state.replaceAll("_", " ") : null);

// ------------------------------------------------------------------ route status

/**
 * What a route tile says. The primary route's Stream Enable command is
 * applied by the engine as soon as it is written, so its resolved value is
 * shown at once (the router's own counters follow within a second).
 */
export function routeStatus(store, name) {
  const r = store.router && (store.router.routes || []).find((x) => x.name === name);
  const doc = store.routeDocs && store.routeDocs.find((d) => d.name === name);
  if (doc && doc.enabled === false) return "DISABLED";
  if (!r) return "NOT RUNNING";
  if (name === store.primary) {
    const en = store.points.get("stream_enable");
    if (en && en.value === false) return "STOPPED";
  }
  // The route's own points, where it has a block: Route Enable is applied
  // as it is written; Route Status says the rest (published every second).
  const en = rpoint(store, name, "route_enable");
  if (en && en.value === false) return "STOPPED";
  const rs = stateText(rpoint(store, name, "route_status"));
  if (rs) return rs;
  if (!r.stream_enabled) return "STOPPED";
  const st = name === store.primary ? store.points.get("stream_status") : null;
  if (st && st.value != null && st.state && st.state !== "LIVE") return st.state;
  if (r.active_input == null) return "NO SIGNAL";
  return "LIVE";
}

/** An input: receiving when bytes arrive, else ready (bound/connected) or idle. */
function inputState(s) {
  if (!s) return badge("NOT RUNNING", "stopped");
  if (s.error) return badge("ERROR", "error");
  if (s.bitrate_bps > 0) return badge("RECEIVING", "live");
  return s.up ? badge("READY", "ok") : badge("IDLE", "nosignal");
}

/** An output's Output Status point (ACTIVE, DISABLED, ERROR) where the route has a block, else the router's state. */
function outputStatus(store, route, name, o) {
  const n = outputNo(store, route, name);
  const ps = n ? rpoint(store, route, "output_status", n) : undefined;
  if (!ps) return outputState(o);
  const t = ps.state || "N/A";
  const b = badge(t, { ACTIVE: "live", DISABLED: "off", ERROR: "error" }[t] || "nosignal");
  b.dataset.point = ps.id;
  if (ps.reason) b.title = ps.reason;
  return b;
}

function outputState(o) {
  if (!o) return badge("NOT RUNNING", "stopped");
  if (!o.enabled) return badge("OFF", "off");
  if (o.error) return badge("ERROR", "error");
  return o.up ? badge("UP", "live") : badge("DOWN", "nosignal");
}

function outputSwitch(route, o, note, store) {
  const n = store ? outputNo(store, route, o.name) : null;
  const pe = n ? rpoint(store, route, "output_enable", n) : undefined;
  if (pe) {
    // Driven through the route's Output Enable point: the switch shows the
    // point's value and writes it (like a BACnet or Modbus write would).
    const on = pe.value !== false;
    if (!can("operator")) return h("span", { class: "muted", "data-point": pe.id }, on ? "on" : "off");
    return h(
      "label",
      { class: "switch", title: `Output Enable (${pe.id}, level ${pe.level ?? "—"})` },
      h("input", {
        type: "checkbox",
        "data-write": "output-enable",
        "data-output": o.name,
        "data-point": pe.id,
        checked: on,
        onchange: pointFlip(store, note, `${o.name} (Output Enable)`, (v) => writeRoutePoint(route, `output_enable.${n}`, v)),
      }),
      h("span", { class: "slider" }),
    );
  }
  if (!can("operator")) return h("span", { class: "muted" }, o.enabled ? "on" : "off");
  return h(
    "label",
    { class: "switch", title: o.enabled ? "Disable this output" : "Enable this output" },
    h("input", {
      type: "checkbox",
      "data-write": "output-enable",
      "data-output": o.name,
      checked: !!o.enabled,
      onchange: flip(note, o.name, (on) =>
        post(`/api/routes/${encodeURIComponent(route)}/outputs/${encodeURIComponent(o.name)}/${on ? "enable" : "disable"}`),
      ),
    }),
    h("span", { class: "slider" }),
  );
}

// ------------------------------------------------------------------ overview

const HEALTH = [
  ["server_status", "Server Status"],
  ["cpu_usage", "CPU"],
  ["memory_usage", "Memory"],
  ["gpu_usage", "GPU"],
  ["gpu_status", "GPU Status"],
  ["communication_status", "Communication"],
];

const overview = {
  mount(el, _arg, store) {
    const health = h("div", { class: "cards", id: "health" });
    const pts = h("tbody");
    const alarmRows = h("tbody");
    const alarmNote = h("p", { class: "muted small", id: "alarm-counts" }, "…");
    const alarms = h(
      "section",
      { class: "card", id: "alarms" },
      h("h2", {}, "Active alarms"),
      alarmNote,
      h(
        "table",
        { class: "grid", id: "alarm-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Point"), h("th", {}, "State"), h("th", {}, "Since"), h("th", {}, "Class"), h("th", {}, "Acknowledge"))),
        alarmRows,
      ),
    );
    // /api/alarms is small (active and unacknowledged alarms only): polled
    // every 2 s while the overview is open, and at once after an ack.
    const loadAlarms = async () => {
      try {
        const d = await get("/api/alarms");
        alarmNote.textContent = `${d.active} active, ${d.unacked} unacknowledged`;
        replace(alarmRows, d.alarms.length ? d.alarms.map((a) => alarmRow(a, loadAlarms, alarmNote)) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No active alarms.")));
      } catch (e) {
        alarmNote.textContent = `Alarms unavailable: ${e.message}`;
      }
    };
    loadAlarms();
    const alarmTimer = setInterval(loadAlarms, 2000);
    const events = h("ul", { class: "events" });
    el.append(
      h("h1", {}, "Overview"),
      health,
      alarms,
      h("section", { class: "card" }, h("h2", {}, "Router events"), events),
      h("section", { class: "card" }, h("h2", {}, "Points (live)"), h("table", { class: "grid", id: "overview-points" },
        h("thead", {}, h("tr", {}, h("th", {}, "Point"), h("th", {}, "Value"), h("th", {}, "Status"))), pts)),
    );
    return {
      update() {
        const d = store.dash || {};
        const card = (k, t, v, extra) =>
          h("div", { class: "card metric", "data-point": k }, h("div", { class: "label" }, t), h("div", { class: "value" }, v), extra || "");
        const cards = HEALTH.map(([id, t]) => {
          const p = store.points.get(id);
          return card(id, t, pointValue(p), p && p.status !== "ok" ? h("div", { class: "muted small" }, p.reason || p.status) : "");
        });
        cards.push(card("uptime", "Uptime", fmtDuration(d.uptime_seconds)));
        cards.push(card("active_streams", "Active streams", d.active_streams ?? "—"));
        cards.push(card("connected_viewers", "Viewers", d.total_viewers ?? "—"));
        replace(health, cards);
        replace(
          pts,
          [...store.points.values()].filter((p) => !p.route).map((p) =>
            h("tr", { "data-point": p.id }, h("td", {}, p.name, h("span", { class: "muted small" }, ` ${p.id}`)), h("td", { class: "val" }, pointValue(p)), h("td", {}, badge(p.status))),
          ),
        );
        replace(
          events,
          store.events.length
            ? store.events.slice(0, 12).map((e) => h("li", {}, h("span", { class: "muted" }, new Date(e.at).toLocaleTimeString()), ` ${e.route}: ${e.event.replaceAll("_", " ")} ${e.output || e.input || ""} ${e.reason || e.error || ""}`))
            : h("li", { class: "muted" }, "No router events since this page opened."),
        );
      },
      unmount() {
        clearInterval(alarmTimer);
      },
    };
  },
};

/** The transition that entered an alarm's current state. */
const ENTERED = { normal: "to-normal", fault: "to-fault" };

/** One row of the active alarms: state, since when, and one Acknowledge
 * button per transition waiting for an ack (operators and admins). */
function alarmRow(a, reload, note) {
  const entered = ENTERED[a.state] || "to-offnormal";
  const since = a.time_stamps[entered];
  const cls = a.state === "normal" ? "live" : a.state === "fault" ? "error" : "nosignal";
  const acks = a.unacked.map((t) =>
    can("operator")
      ? h(
          "button",
          {
            type: "button",
            "data-ack": t,
            title: `Acknowledge the ${t} transition of ${a.point}`,
            onclick: async (ev) => {
              ev.target.disabled = true;
              try {
                await post(`/api/alarms/${encodeURIComponent(a.point)}/ack`, { transition: t, time_stamp: a.time_stamps[t] || "latest", comment: "acknowledged in the console" });
              } catch (e) {
                note.textContent = `Acknowledge failed: ${e.message}`;
              }
              reload();
            },
          },
          `Acknowledge ${t}`,
        )
      : h("span", { class: "muted" }, `${t} unacknowledged`),
  );
  return h(
    "tr",
    { "data-alarm": a.point },
    h("td", {}, a.name || a.point, h("span", { class: "muted small" }, ` ${a.point}`), a.route ? h("span", { class: "muted small" }, ` (${a.route})`) : ""),
    h("td", {}, badge(a.state.toUpperCase(), cls), a.value_state ? h("span", { class: "muted small" }, ` ${a.value_state}`) : ""),
    h("td", {}, since ? new Date(since).toLocaleString() : "—"),
    h("td", {}, String(a.notification_class)),
    h("td", {}, acks.length ? acks : h("span", { class: "muted" }, "acknowledged")),
  );
}

// ------------------------------------------------------------------ routes

/**
 * A route's share of `GET /api/alarms`: how many of its points are out of
 * NORMAL, how many transitions wait for an acknowledgement, and the badge
 * text. `key` changes only when the badge must.
 */
function routeAlarms(store, name) {
  const mine = ((store.alarms && store.alarms.alarms) || []).filter((a) => a.route === name);
  const active = mine.filter((a) => a.state !== "normal").length;
  const unacked = mine.filter((a) => (a.unacked || []).length > 0).length;
  const text = active ? `${active} alarm${active > 1 ? "s" : ""}` : `${unacked} unacked`;
  const title = mine.map((a) => `${a.name || a.point}: ${a.state}${(a.unacked || []).length ? " (unacknowledged)" : ""}`).join("\n");
  return { active, unacked, text, title, key: JSON.stringify([active, unacked, title]) };
}

/**
 * One route tile. Built once per route and patched in place: a switch
 * being clicked is never replaced under the pointer; the outputs table is
 * rebuilt only when an output's state (not its bitrate) changes.
 */
function routeTile(store, name, note) {
  const status = h("span", { class: "route-status" });
  const alarm = h("a", { class: "route-alarms", href: "#/overview" });
  const input = h("b", { class: "active-input" });
  const failover = h("b");
  const viewers = h("b");
  const rin = h("div");
  const rout = h("div");
  const outs = h("tbody");
  const el = h(
    "section",
    { class: "card tile", "data-route": name },
    h("div", { class: "tile-head" },
      h("a", { href: `#/routes/${encodeURIComponent(name)}`, class: "route-name" }, name),
      name === store.primary ? h("span", { class: "muted small", title: "the seed's stream points act on this route" }, " primary") : "",
      alarm,
      status),
    h("div", { class: "kv" }, h("span", {}, "Active input"), input, h("span", {}, "Failover"), failover, h("span", {}, "Viewers"), viewers),
    h("div", { class: "rates" }, rin, rout),
    h("table", { class: "grid outputs" }, outs),
  );
  let shownOuts = "";
  let shownStatus = "";
  let shownAlarms = "";
  const rateCells = new Map();
  el.update = () => {
    const al = routeAlarms(store, name);
    if (al.key !== shownAlarms) {
      shownAlarms = al.key;
      alarm.dataset.active = String(al.active);
      alarm.dataset.unacked = String(al.unacked);
      alarm.title = al.title;
      replace(alarm, al.active || al.unacked ? badge(al.text, al.active ? "alarm" : "unacked") : "");
    }
    const doc = store.routeDocs.find((d) => d.name === name);
    const r = store.router && (store.router.routes || []).find((x) => x.name === name);
    const st = routeStatus(store, name);
    if (st !== shownStatus) {
      shownStatus = st;
      status.dataset.status = st;
      replace(status, badge(st));
      el.className = `card tile st-${st.toLowerCase().replace(/[^a-z]/g, "")}`;
    }
    // The route's points where it has a block (what BACnet, Modbus and
    // Haystack see); the router's own stats otherwise.
    const pt = (tid) => rpoint(store, name, tid);
    const mark = (e, p) => (p ? (e.dataset.point = p.id) : delete e.dataset.point);
    const act_in = r && r.active_input != null ? r.inputs[r.active_input] : null;
    const pin = pt("active_input");
    mark(input, pin);
    input.textContent = pin ? (pin.value != null ? pin.state || `${pin.value}` : "none") : act_in ? act_in.name : "none";
    const fc = pt("failover_count");
    mark(failover, fc);
    const switches = fc && fc.value != null ? fc.value : r ? r.switches : null;
    failover.textContent = r ? `${r.forced_input != null ? `forced to ${r.inputs[r.forced_input]?.name}` : "automatic"}, ${switches ?? "—"} switches` : "—";
    const pv = pt("viewers");
    mark(viewers, pv);
    const v = pv ? pv.value : r ? r.outputs.filter((o) => o.kind === "http" || o.kind === "srt-listener").reduce((a, o) => a + o.clients, 0) : null;
    viewers.textContent = v ?? "—";
    const rates = store.rates.get(name) || { inp: [], out: [] };
    const mbps = (p, fallback) => (p ? (p.value == null ? "—" : fmtBps(Math.round(p.value * 1e6))) : fmtBps(fallback));
    const bi = pt("input_bitrate");
    const bo = pt("output_bitrate");
    replace(rin, h("span", { class: "muted small", "data-point": bi ? bi.id : false }, `in ${mbps(bi, rates.inp.at(-1))}`), sparkline(rates.inp, "in"));
    replace(rout, h("span", { class: "muted small", "data-point": bo ? bo.id : false }, `out ${mbps(bo, rates.out.at(-1))}`), sparkline(rates.out, "out"));
    const list = (doc && doc.outputs) || [];
    const key = JSON.stringify([can("operator"), list.map((od) => {
      const o = r && r.outputs.find((x) => x.name === od.name);
      const n = outputNo(store, name, od.name);
      const pe = n && rpoint(store, name, "output_enable", n);
      const ps = n && rpoint(store, name, "output_status", n);
      return [od.name, od.type, o ? [o.enabled, o.up, !!o.error] : null, pe ? [pe.value, pe.level] : null, ps ? [ps.state, ps.reason] : null];
    })]);
    if (key !== shownOuts) {
      shownOuts = key;
      rateCells.clear();
      replace(outs, list.map((od) => {
        const o = r && r.outputs.find((x) => x.name === od.name);
        const rate = h("td", { class: "num" });
        rateCells.set(od.name, rate);
        return h("tr", { "data-output": od.name }, h("td", {}, od.name), h("td", { class: "muted" }, od.type),
          h("td", {}, outputStatus(store, name, od.name, o)), rate, h("td", {}, o ? outputSwitch(name, o, note, store) : ""));
      }));
    }
    for (const [n, cell] of rateCells) {
      const o = r && r.outputs.find((x) => x.name === n);
      cell.textContent = o ? fmtBps(o.bitrate_bps) : "—";
    }
  };
  return el;
}

const routes = {
  mount(el, _arg, store) {
    const note = notice();
    const grid = h("div", { class: "tiles", id: "tiles" });
    el.append(
      h("h1", {}, "Routes"),
      h("p", { class: "muted small" }, "Status, active input, failover count, viewers, bitrates and each output's status and switch come from the route's point block (the same points BACnet, Modbus and Haystack serve; docs/route-points.md). Bitrate sparklines: the last 5 minutes, sampled once a second since this page opened."),
      note,
      grid,
    );
    loadRoutes();
    const tiles = new Map();
    let shownNames = "";
    return {
      update() {
        if (!store.routeDocs) return;
        const names = store.routeDocs.map((d) => d.name);
        if (!names.length) {
          replace(grid, h("p", { class: "muted" }, "No routes configured."));
          shownNames = "";
          return;
        }
        if (JSON.stringify(names) !== shownNames) {
          shownNames = JSON.stringify(names);
          for (const n of [...tiles.keys()]) if (!names.includes(n)) tiles.delete(n);
          for (const n of names) if (!tiles.has(n)) tiles.set(n, routeTile(store, n, note));
          replace(grid, names.map((n) => tiles.get(n)));
        }
        for (const t of tiles.values()) t.update();
      },
    };
  },
};

// ------------------------------------------------------------------ route detail

const TEMPLATES = {
  udp: { name: "udp-out", type: "udp", dest: "127.0.0.1:5006" },
  srt: { name: "srt-out", type: "srt", mode: "listener", addr: "0.0.0.0:9000" },
  http: { name: "http-out", type: "http", path: "name" },
  hls: { name: "hls-out", type: "hls", path: "name", segment: "2s", window: 6 },
  record: { name: "recording", type: "record", segment: "10min", keep: 12 },
  rtmp: { name: "cdn", type: "rtmp", url: "rtmp://example.net/live", key: "STREAM-KEY" },
};

/** The keys each output type's form shows (docs/routes.md); the JSON below takes any other. */
const FIELDS = {
  udp: ["dest", "ttl"],
  srt: ["mode", "addr", "latency", "passphrase", "pbkeylen", "streamid"],
  http: ["path"],
  hls: ["path", "segment", "window"],
  record: ["segment", "keep"],
  rtmp: ["url", "key", "preset"],
};
const NUMERIC = new Set(["ttl", "pbkeylen", "window", "keep", "queue"]);

/** Form fields over the JSON text: a field edit rewrites its key, keeping every other key. */
function outputFields(text, type) {
  const box = h("div", { class: "fields" });
  const draw = () => {
    let doc = {};
    try {
      doc = JSON.parse(text.value);
    } catch {
      // The JSON is being edited by hand: the fields wait for it to parse.
    }
    const t = doc.type || type;
    replace(box, ["name", ...(FIELDS[t] || [])].map((k) =>
      h("label", {}, k, h("input", {
        "data-field": k,
        value: doc[k] ?? "",
        oninput: (e) => {
          let d;
          try {
            d = JSON.parse(text.value);
          } catch {
            return;
          }
          const v = e.target.value;
          if (v === "") delete d[k];
          else d[k] = NUMERIC.has(k) && /^\d+$/.test(v) ? Number(v) : v;
          text.value = JSON.stringify(d, null, 2);
        },
      }))));
  };
  text.addEventListener("change", draw);
  draw();
  box.redraw = draw;
  return box;
}

function srtTable(items) {
  const rows = [];
  for (const io of items) {
    for (const c of io.srt || []) {
      rows.push(
        h("tr", { "data-io": io.name }, h("td", {}, io.name), h("td", {}, c.peer || "—"), h("td", { class: "num" }, c.rtt_ms.toFixed(1)),
          h("td", { class: "num" }, c.bandwidth_mbps.toFixed(1)), h("td", { class: "num" }, `${c.pkt_snd_loss}/${c.pkt_rcv_loss}`),
          h("td", { class: "num" }, c.pkt_retrans), h("td", { class: "num" }, `${c.snd_buf_ms}/${c.rcv_buf_ms}`)),
      );
    }
  }
  if (!rows.length) return h("p", { class: "muted" }, "No SRT connections.");
  return h("table", { class: "grid", id: "srt-table" }, h("thead", {}, h("tr", {}, ["Input/output", "Peer", "RTT ms", "Bandwidth Mb/s", "Loss snd/rcv", "Retrans", "Buffer snd/rcv ms"].map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

/** An output's JSON editor (add or edit): the REST API validates, its error is shown as is. */
function outputEditor(route, existing, note, done) {
  const typeSel = h("select", { id: "out-type" }, Object.keys(TEMPLATES).map((t) => h("option", { value: t }, t)));
  const text = h("textarea", { id: "out-json", rows: 8, spellcheck: "false" });
  text.value = JSON.stringify(existing || TEMPLATES.udp, null, 2);
  const fields = outputFields(text, (existing || TEMPLATES.udp).type);
  typeSel.onchange = () => {
    text.value = JSON.stringify(TEMPLATES[typeSel.value], null, 2);
    fields.redraw();
  };
  const err = h("pre", { class: "error", id: "out-error" });
  const save = async () => {
    err.textContent = "";
    let doc;
    try {
      doc = JSON.parse(text.value);
    } catch (x) {
      err.textContent = `not JSON: ${x.message}`;
      return;
    }
    const base = `/api/routes/${encodeURIComponent(route)}/outputs`;
    try {
      if (existing) await api("PUT", `${base}/${encodeURIComponent(existing.name)}`, doc);
      else await post(base, doc);
      note.ok(`${existing ? "saved" : "added"} ${doc.name || "output"}`);
      loadRoutes();
      done();
    } catch (x) {
      err.textContent = x.message;
    }
  };
  return h(
    "div",
    { class: "editor card" },
    h("h3", {}, existing ? `Edit output ${existing.name}` : "Add an output"),
    existing ? "" : h("label", {}, "Type ", typeSel),
    fields,
    h("details", { open: true }, h("summary", { class: "small muted" }, "JSON (every key)"), text),
    h("p", { class: "muted small" }, "Keys as in a [[route.output]] table (docs/routes.md). Secrets show as \"***\" and stay unchanged when sent back."),
    h("div", {}, h("button", { "data-write": "output-save", id: "out-save", onclick: save }, existing ? "Save" : "Add"), " ", h("button", { onclick: done }, "Cancel")),
    err,
  );
}

const routeDetail = {
  mount(el, name, store) {
    const note = notice();
    const head = h("div", { class: "tile-head" });
    const inputs = h("div");
    const outputs = h("div");
    const srt = h("div");
    const controls = h("div", { class: "controls" });
    const editor = h("div");
    const blockBox = h("div");
    const canvas = h("canvas", { id: "preview", width: 320, height: 180 });
    const pinfo = h("p", { class: "muted small", id: "preview-info" }, "Preview: starting…");
    const preview = new Preview(canvas, pinfo);
    el.append(
      h("p", {}, h("a", { href: "#/routes" }, "← Routes")),
      head,
      note,
      h("div", { class: "detail" },
        h("section", { class: "card" }, h("h2", {}, "Preview"), canvas, pinfo),
        h("section", { class: "card" }, h("h2", {}, "Commands"), controls)),
      h("section", { class: "card" }, h("h2", {}, "Inputs (priority order)"), inputs),
      h("section", { class: "card" }, h("h2", {}, "Outputs"), outputs, editor),
      h("section", { class: "card" }, h("h2", {}, "SRT connections"), srt),
      h("section", { class: "card", id: "route-points" }, h("h2", {}, "Route points"), blockBox),
    );
    loadRoutes();
    const primary = () => name === store.primary;
    const doc = () => store.routeDocs && store.routeDocs.find((d) => d.name === name);

    /** PUT the route's document changed by `f` (the server validates it). */
    const putDocNow = async (f) => {
      const d = JSON.parse(JSON.stringify(doc()));
      delete d.stats;
      f(d);
      await api("PUT", `/api/routes/${encodeURIComponent(name)}`, d);
    };
    const putDoc = (f, what) => act(note, what, () => putDocNow(f));

    const toggle = (label, id, on, onchange, title) =>
      h("label", { class: "toggle", title: title || "" }, h("span", {}, label), " ",
        h("label", { class: "switch" }, h("input", { type: "checkbox", "data-write": id, id, checked: on, onchange }), h("span", { class: "slider" })));

    let shownControls = "";
    function drawControls(r, d) {
      // Redraw only when what the controls show changed (keeps focus).
      const ep = store.points;
      const rv = (t) => { const p = rpoint(store, name, t); return p ? p.value : undefined; };
      const key = JSON.stringify([primary(), can("operator"), can("admin"), r && r.stream_enabled, r && r.forced_input, d && d.mode,
        ["stream_enable", "recording_enable", "transcode_enable", "input_select"].map((k) => ep.get(k) && ep.get(k).value),
        ["route_enable", "recording_enable", "transcode_enable", "input_select"].map(rv)]);
      if (key === shownControls) return;
      shownControls = key;
      const items = [];
      if (!can("operator")) {
        items.push(h("p", { class: "muted" }, "Read-only: your role cannot command routes."));
      }
      if (primary()) {
        const pv = (k) => ep.get(k) && ep.get(k).value;
        if (can("operator")) {
          items.push(toggle("Stream enable", "stream-enable", pv("stream_enable") !== false, pointFlip(store, note, "Stream Enable", (on) => writePoint("stream_enable", on)), "point stream_enable"));
          items.push(toggle("Recording", "recording-enable", !!pv("recording_enable"), pointFlip(store, note, "Recording Enable", (on) => writePoint("recording_enable", on)), "point recording_enable"));
          items.push(toggle("Transcode", "transcode-enable", !!pv("transcode_enable"), pointFlip(store, note, "Transcode Enable", (on) => writePoint("transcode_enable", on)), "point transcode_enable"));
        } else {
          items.push(h("p", {}, `Stream enable: ${pointValue(ep.get("stream_enable"))} · Recording: ${pointValue(ep.get("recording_enable"))} · Transcode: ${pointValue(ep.get("transcode_enable"))}`));
        }
        items.push(h("p", { class: "muted small" }, "This is the primary route: these switches write the seed's command points (at the REST priority), like BACnet or Modbus would."));
      } else if (!rpoint(store, name, "route_enable")) {
        items.push(h("p", { class: "muted small" }, "Stream enable, force input and the recording/transcode points act on the primary route only; here recordings are their record outputs' switches."));
      }
      if (rpoint(store, name, "route_enable")) {
        // The route's own command points (its block; docs/route-points.md).
        const b = store.blocks.get(name);
        if (can("operator")) {
          items.push(toggle("Route enable", "route-enable", rv("route_enable") !== false, pointFlip(store, note, "Route Enable", (on) => writeRoutePoint(name, "route_enable", on)), `point route.${b.slot}.route_enable`));
          items.push(toggle("Recording (route)", "route-recording", !!rv("recording_enable"), pointFlip(store, note, "Recording Enable", (on) => writeRoutePoint(name, "recording_enable", on)), `point route.${b.slot}.recording_enable`));
          items.push(toggle("Transcode (route)", "route-transcode", !!rv("transcode_enable"), pointFlip(store, note, "Transcode Enable", (on) => writeRoutePoint(name, "transcode_enable", on)), `point route.${b.slot}.transcode_enable`));
        } else {
          items.push(h("p", {}, `Route enable: ${pointValue(rpoint(store, name, "route_enable"))} · Recording: ${pointValue(rpoint(store, name, "recording_enable"))} · Transcode: ${pointValue(rpoint(store, name, "transcode_enable"))}`));
        }
        items.push(h("p", { class: "muted small" }, `Route block, slot ${b.slot}: these switches write the route's own points at the REST priority; the priority arrays are on Points.`));
      }
      if (!primary()) {
        if (can("admin") && d) {
          items.push(toggle("Transcode (route mode)", "transcode-mode", d.mode === "transcode", flip(note, "transcode mode", (on) => putDocNow((x) => (x.mode = on ? "transcode" : "passthrough")))));
        }
      }
      replace(controls, items);
    }

    const inRates = new Map();
    const outRates = new Map();
    const rateCell = (map, n, x) => {
      const c = h("td", { class: "num" }, x ? fmtBps(x.bitrate_bps) : "—");
      map.set(n, c);
      return c;
    };
    let shownInputs = "";
    function drawInputs(r, d) {
      // Rebuilt only when the rows' state changes (buttons stay put under
      // the pointer); bitrates are patched in place below.
      const key = JSON.stringify([r && r.inputs.map((i) => [i.up, i.error, i.bitrate_bps > 0]), r && r.active_input, r && r.forced_input, d && d.inputs.map((i) => i.name), can("operator"), can("admin")]);
      if (key === shownInputs) {
        for (const [n, cell] of inRates) {
          const x = r && r.inputs.find((i) => i.name === n);
          cell.textContent = x ? fmtBps(x.bitrate_bps) : "—";
        }
        return;
      }
      shownInputs = key;
      inRates.clear();
      const list = (d && d.inputs) || [];
      const rows = list.map((id, i) => {
        const s = r && r.inputs.find((x) => x.name === id.name);
        const active = r && r.active_input != null && r.inputs[r.active_input]?.name === id.name;
        const cells = [
          h("td", {}, `${i + 1}`),
          h("td", {}, id.name, active ? h("span", { class: "badge live" }, "active") : ""),
          h("td", { class: "muted" }, id.type),
          h("td", {}, inputState(s)),
          rateCell(inRates, id.name, s),
          h("td", { class: "small" }, s && s.error ? s.error : ""),
        ];
        const btns = [];
        if (can("admin") && list.length > 1) {
          const move = (to) =>
            putDoc((x) => {
              const [it] = x.inputs.splice(i, 1);
              x.inputs.splice(to, 0, it);
            }, `move ${id.name}`);
          if (i > 0) btns.push(h("button", { "data-write": "input-up", onclick: () => move(i - 1), title: "higher priority" }, "↑"));
          if (i < list.length - 1) btns.push(h("button", { "data-write": "input-down", onclick: () => move(i + 1), title: "lower priority" }, "↓"));
        }
        if (primary() && can("operator")) {
          btns.push(h("button", { "data-write": "force-input", onclick: () => act(note, `force ${id.name}`, () => writePoint("input_select", i + 1)) }, "Force"));
        } else if (rpoint(store, name, "input_select") && can("operator")) {
          // The route's Input Select: 1 = Auto, 1 + N = input N.
          btns.push(h("button", { "data-write": "force-input", onclick: () => act(note, `force ${id.name}`, () => writeRoutePoint(name, "input_select", i + 2)) }, "Force"));
        }
        cells.push(h("td", {}, btns));
        return h("tr", { "data-input": id.name }, cells);
      });
      const forced = r && r.forced_input != null;
      replace(
        inputs,
        h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["#", "Name", "Type", "State", "Bitrate", "Error", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
        h("p", { class: "small" }, forced ? `Forced to input ${r.forced_input + 1}. ` : "Automatic failover. ",
          forced && can("operator") && (primary() || rpoint(store, name, "input_select"))
            ? h("button", { "data-write": "auto-input", onclick: () => act(note, "automatic failover", () => (primary() ? writePoint("input_select", 0) : writeRoutePoint(name, "input_select", 1))) }, "Automatic")
            : ""),
      );
    }

    let shownOutputs = "";
    function drawOutputs(r, d) {
      const blockKey = ((d && d.outputs) || []).map((od) => {
        const n = outputNo(store, name, od.name);
        return n ? ["output_enable", "output_status"].map((t) => { const p = rpoint(store, name, t, n); return p ? [p.value, p.level, p.state] : null; }) : null;
      });
      const key = JSON.stringify([r && r.outputs.map((o) => [o.enabled, o.up, o.error, o.last_send_error, o.clients]), d && d.outputs, can("operator"), can("admin"), blockKey]);
      if (key === shownOutputs) {
        for (const [n, cell] of outRates) {
          const x = r && r.outputs.find((o) => o.name === n);
          cell.textContent = x ? fmtBps(x.bitrate_bps) : "—";
        }
        return;
      }
      shownOutputs = key;
      outRates.clear();
      const rows = ((d && d.outputs) || []).map((od) => {
        const o = r && r.outputs.find((x) => x.name === od.name);
        const target = od.dest || od.addr || od.url || (od.path ? `/${od.type === "hls" ? "hls" : "stream"}/${od.path}` : "");
        const btns = [];
        if (can("admin")) {
          btns.push(h("button", { "data-write": "output-edit", onclick: () => replace(editor, outputEditor(name, od, note, () => clear(editor))) }, "Edit"));
          btns.push(h("button", {
            "data-write": "output-remove",
            onclick: () => {
              if (confirm(`Remove output ${od.name}?`)) act(note, `remove ${od.name}`, () => api("DELETE", `/api/routes/${encodeURIComponent(name)}/outputs/${encodeURIComponent(od.name)}`));
            },
          }, "Remove"));
        }
        return h("tr", { "data-output": od.name },
          h("td", {}, od.name), h("td", { class: "muted" }, od.type), h("td", { class: "small" }, target),
          h("td", {}, outputStatus(store, name, od.name, o)), rateCell(outRates, od.name, o),
          h("td", { class: "num" }, o ? o.clients : "—"),
          h("td", { class: "small" }, o && (o.error || o.last_send_error) ? o.error || o.last_send_error : ""),
          h("td", {}, o ? outputSwitch(name, o, note, store) : ""), h("td", {}, btns));
      });
      replace(
        outputs,
        h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Name", "Type", "Target", "State", "Bitrate", "Clients", "Error", "On", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
        can("admin") ? h("button", { "data-write": "output-add", id: "output-add", onclick: () => replace(editor, outputEditor(name, null, note, () => clear(editor))) }, "Add output") : "",
      );
    }

    let shownBlock = "";
    function drawBlock() {
      const b = store.blocks.get(name);
      const ps = b ? b.ids.map((id) => store.points.get(id)).filter((p) => p && !(p.route.output && !p.route.output_name)) : [];
      const key = JSON.stringify(ps.map((p) => [p.id, p.value, p.state, p.status, p.level]));
      if (key === shownBlock) return;
      shownBlock = key;
      if (!b) {
        replace(blockBox, h("p", { class: "muted" }, "This route has no point block (route points are disabled, or every slot is taken: docs/route-points.md)."));
        return;
      }
      replace(blockBox,
        h("p", { class: "muted small" }, `Slot ${b.slot}: Haystack equip @route.${b.slot}; ids route.${b.slot}.<id>[.<output>]. Unused output numbers are on Points.`),
        h("table", { class: "grid", id: "block-table" }, h("thead", {}, h("tr", {}, ["Point", "Value", "Status", "Level", "Modbus"].map((t) => h("th", {}, t)))),
          h("tbody", {}, ps.map((p) => h("tr", { "data-point": p.id },
            h("td", {}, h("a", { href: `#/points/${encodeURIComponent(p.id)}` }, p.name), p.route.output_name ? h("span", { class: "muted small" }, ` ${p.route.output_name}`) : ""),
            h("td", { class: "val" }, pointValue(p)), h("td", {}, badge(p.status)), h("td", {}, p.level ?? ""),
            h("td", { class: "small" }, (p.addresses?.modbus || []).join(", ")))))));
    }

    return {
      update() {
        const r = store.router && (store.router.routes || []).find((x) => x.name === name);
        const d = doc();
        const st = routeStatus(store, name);
        replace(head, h("h1", {}, name), h("span", { class: "route-status", "data-status": st }, badge(st)),
          r ? h("span", { class: "muted" }, ` · ${r.switches} failovers`) : "");
        if (d === undefined && store.routeDocs) {
          replace(inputs, h("p", { class: "error" }, `No route named ${name}.`));
          return;
        }
        drawControls(r, d);
        drawInputs(r, d);
        drawOutputs(r, d);
        replace(srt, srtTable(r ? [...r.inputs, ...r.outputs] : []));
        drawBlock();
        preview.setSource(d, session);
      },
      unmount() {
        preview.stop();
      },
    };
  },
};

// ------------------------------------------------------------------ points

function historyChart(samples) {
  const w = 640;
  const ht = 160;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
  svg.setAttribute("class", "history");
  const pts = samples.filter((s) => s.v != null).map((s) => [Date.parse(s.t), typeof s.v === "boolean" ? +s.v : +s.v]);
  if (pts.length < 2) {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", 10);
    t.setAttribute("y", 20);
    t.textContent = "Not enough history yet.";
    svg.append(t);
    return svg;
  }
  const t0 = pts[0][0];
  const t1 = pts.at(-1)[0];
  const lo = Math.min(...pts.map((p) => p[1]));
  const hi = Math.max(...pts.map((p) => p[1]));
  const span = hi - lo || 1;
  const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  pl.setAttribute("points", pts.map(([t, v]) => `${(((t - t0) / (t1 - t0 || 1)) * (w - 60) + 50).toFixed(1)},${(ht - 20 - ((v - lo) / span) * (ht - 40)).toFixed(1)}`).join(" "));
  svg.append(pl);
  for (const [y, v] of [[ht - 20, lo], [20, hi]]) {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", 2);
    t.setAttribute("y", y + 4);
    t.textContent = +v.toFixed(2);
    svg.append(t);
  }
  return svg;
}

/** 7 days of a point's history, fetched at most once a minute (the panel redraws with every new value). */
const histories = new Map();
function historyOf(id) {
  const c = histories.get(id);
  if (c && Date.now() - c.at < 60000) return c.p;
  const from = new Date(Date.now() - 7 * 86400e3).toISOString();
  const p = get(`/api/points/${encodeURIComponent(id)}/history?from=${encodeURIComponent(from)}&max=1000`);
  histories.set(id, { at: Date.now(), p });
  p.catch(() => histories.delete(id));
  return p;
}

function pointPanel(store, id, close, form) {
  const p = store.points.get(id);
  const note = notice();
  const box = h("div", { class: "card panel", id: "point-panel", "data-point": id });
  if (!p) return box;
  const items = [h("h2", {}, `${p.name} `, h("span", { class: "muted small" }, p.id)), h("p", { class: "muted" }, p.description || ""),
    h("p", {}, "Value ", h("b", {}, pointValue(p)), " · ", badge(p.status), p.reason ? h("span", { class: "muted small" }, ` ${p.reason}`) : "")];
  if (p.priority_array) {
    const slots = p.priority_array.slots.map((s) => h("tr", { class: s.value == null ? "muted" : "", "data-level": s.level },
      h("td", {}, s.level), h("td", {}, s.value == null ? "—" : `${s.value}`), h("td", { class: "small" }, s.who || ""), h("td", { class: "small" }, s.at ? new Date(s.at).toLocaleString() : "")));
    slots.push(h("tr", {}, h("td", {}, "17"), h("td", {}, `${p.priority_array.default}`), h("td", { class: "small" }, "relinquish default"), h("td", {})));
    items.push(h("h3", {}, "Priority array"), h("table", { class: "grid", id: "priority-array" }, h("thead", {}, h("tr", {}, ["Level", "Value", "Written by", "At"].map((t) => h("th", {}, t)))), h("tbody", {}, slots)));
  }
  const adminOnly = id === "system_restart";
  if (p.writable && can(adminOnly ? "admin" : "operator")) {
    let input;
    if (p.kind === "bool") input = h("select", { id: "write-value" }, h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
    else if (p.kind === "enum") input = h("select", { id: "write-value" }, (p.states || []).map((s, i) => h("option", { value: i + 1 }, `${i + 1} ${s}`)));
    else input = h("input", { id: "write-value", type: "number", step: "any", value: p.value ?? "" });
    const level = h("select", { id: "write-level" }, h("option", { value: "" }, "REST default"),
      Array.from({ length: 16 }, (_, i) => h("option", { value: i + 1 }, `${i + 1}`)));
    // The panel is redrawn when the point changes: keep the user's choices.
    if (form.id === id) {
      if (form.value != null) input.value = form.value;
      if (form.level != null) level.value = form.level;
    }
    input.addEventListener("change", () => Object.assign(form, { id, value: input.value }));
    level.addEventListener("change", () => Object.assign(form, { id, level: level.value }));
    const parse = () => (p.kind === "bool" ? input.value === "true" : Number(input.value));
    const prio = () => (level.value ? Number(level.value) : undefined);
    items.push(h("h3", {}, "Command"), h("div", { class: "write" },
      h("label", {}, "Value ", input), h("label", {}, "Priority ", level),
      h("button", { "data-write": "point-write", id: "write", onclick: () => act(note, `write ${id}`, () => writePoint(id, parse(), prio())) }, "Write"),
      h("button", { "data-write": "point-relinquish", id: "relinquish", onclick: () => act(note, `relinquish ${id}`, () => writePoint(id, null, prio())) }, "Relinquish")), note);
  } else if (p.writable) {
    items.push(h("p", { class: "muted small" }, `Commanding this point needs the ${adminOnly ? "admin" : "operator"} role.`));
  }
  if (p.tags && "his" in p.tags) {
    const chart = h("div", { class: "chart" }, h("p", { class: "muted small" }, "Loading 7 days of history…"));
    items.push(h("h3", {}, "History (7 days)"), chart);
    historyOf(id)
      .then((r) => replace(chart, historyChart(r.samples), h("p", { class: "muted small" }, `${r.samples.length} samples`)))
      .catch((x) => replace(chart, h("p", { class: "error" }, x.message)));
  }
  items.push(h("button", { onclick: close }, "Close"));
  box.append(...items);
  return box;
}

const points = {
  mount(el, arg, store) {
    const body = h("tbody");
    const panel = h("div", { class: "side" });
    const layout = h("div", { class: "points-layout" });
    const form = {};
    const rows = new Map();
    let shownIds = "";
    let open = arg || null;
    let shownPanel = "";
    loadRoutes();
    layout.append(
      h("table", { class: "grid points", id: "points-table" },
        h("thead", {}, h("tr", {}, ["Point", "Value", "Status", "Level", "BACnet", "Modbus", "Haystack", "REST"].map((t) => h("th", {}, t)))), body),
      panel,
    );
    el.append(
      h("h1", {}, "Points"),
      h("p", { class: "muted small" }, "Every point with its address on each protocol: the server's, then each route's block (docs/route-points.md). Click a point for its priority array, commands and history."),
      layout,
    );
    const self = {
      update() {
        // Rows are built once per point and patched, so a click on a row
        // is never lost to a redraw between press and release.
        const ids = [...store.points.keys()];
        if (ids.join() !== shownIds) {
          shownIds = ids.join();
          rows.clear();
          const row = (p) => {
            const val = h("td", { class: "val" });
            const st = h("td");
            const lvl = h("td");
            const out = p.route && p.route.output ? p.route.output_name || "unused output" : "";
            const tr = h("tr", { "data-point": p.id, onclick: () => { open = p.id; shownPanel = ""; self.update(); } },
              h("td", {}, p.name, out ? h("span", { class: "muted small" }, ` (${out})`) : "", h("div", { class: "muted small" }, p.id)), val, st, lvl,
              p.route && !p.addresses?.bacnet
                ? h("td", { class: "small muted", title: "no BACnet object (docs/route-points.md)" }, "—")
                : h("td", { class: "small" }, p.addresses?.bacnet || ""),
              h("td", { class: "small" }, (p.addresses?.modbus || []).join(", ")),
              h("td", { class: "small" }, `@${p.id}`),
              h("td", { class: "small" }, (p.addresses?.http || []).join(", ")));
            rows.set(p.id, { tr, val, st, lvl, shown: "" });
            return tr;
          };
          const all = [...store.points.values()];
          const groups = [h("tr", { class: "group", "data-block": "" }, h("th", { colspan: 8 }, "Server (streaming-server points)")), ...all.filter((p) => !p.route).map(row)];
          // One group per route block, in slot order.
          for (const [name, b] of [...store.blocks].sort((x, y) => x[1].slot - y[1].slot)) {
            groups.push(h("tr", { class: "group", "data-block": name }, h("th", { colspan: 8 },
              h("a", { href: `#/routes/${encodeURIComponent(name)}` }, `Route ${name}`), ` · slot ${b.slot} · Haystack equip @route.${b.slot}`)));
            groups.push(...b.ids.map((id) => store.points.get(id)).filter(Boolean).map(row));
          }
          replace(body, groups);
        }
        for (const [id, r] of rows) {
          const p = store.points.get(id);
          const key = JSON.stringify([pointValue(p), p.status, p.level, id === open]);
          if (key === r.shown) continue;
          r.shown = key;
          r.val.textContent = pointValue(p);
          replace(r.st, badge(p.status));
          r.lvl.textContent = p.level ?? "";
          r.tr.className = id === open ? "sel" : "";
        }
        const cur = open && store.points.get(open);
        // Redraw the panel when its point changed, not while typing.
        const key = cur ? JSON.stringify([cur.value, cur.status, cur.priority_array, can("operator")]) : "";
        if (key !== shownPanel) {
          shownPanel = key;
          const keepNote = panel.querySelector(".notice");
          replace(panel, cur ? pointPanel(store, open, () => { open = null; shownPanel = ""; self.update(); }, form) : "");
          layout.classList.toggle("with-panel", !!cur);
          const n = panel.querySelector(".notice");
          if (keepNote && n) n.replaceWith(keepNote);
        }
      },
    };
    return self;
  },
};

// ------------------------------------------------------------------ audit

const audit = {
  mount(el) {
    const f = {
      kind: h("input", { id: "f-kind", list: "audit-kinds", placeholder: "kind (any)" }),
      target: h("input", { id: "f-target", placeholder: "point or route" }),
      source: h("input", { id: "f-source", placeholder: "protocol (modbus, rest, …)" }),
      from: h("input", { id: "f-from", type: "datetime-local" }),
      to: h("input", { id: "f-to", type: "datetime-local" }),
    };
    const body = h("tbody");
    const more = h("button", { id: "audit-more" }, "Older");
    const err = h("p", { class: "error" });
    let next = null;
    const load = async (append) => {
      const q = new URLSearchParams({ limit: "100" });
      for (const k of ["kind", "target", "source"]) if (f[k].value) q.set(k, f[k].value);
      for (const k of ["from", "to"]) if (f[k].value) q.set(k, new Date(f[k].value).toISOString());
      if (append && next) q.set("before", next);
      err.textContent = "";
      try {
        const r = await get(`/api/audit?${q}`);
        if (!append) clear(body);
        for (const e of r.events) {
          const what = e.priority != null ? `P${e.priority}: ${e.requested ?? "relinquish"} (${e.old ?? "—"} → ${e.new ?? "—"}) ` : "";
          body.append(h("tr", { "data-kind": e.kind }, h("td", { class: "small" }, new Date(e.at).toLocaleString()), h("td", {}, e.kind),
            h("td", {}, e.target || ""), h("td", { class: "small" }, [e.protocol, e.peer].filter(Boolean).join(" ")), h("td", { class: "small" }, e.user || ""),
            h("td", { class: e.result === "ok" ? "" : "error" }, e.result || ""), h("td", { class: "small" }, what + (e.detail || ""))));
        }
        next = r.next;
        more.disabled = !next;
      } catch (x) {
        err.textContent = x.message;
      }
    };
    more.onclick = () => load(true);
    el.append(
      h("h1", {}, "Audit"),
      h("datalist", { id: "audit-kinds" }, ["write", "auth", "login", "route", "profile", "apikey", "failover", "restart", "audit"].map((k) => h("option", { value: k }))),
      h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load(false); } },
        f.kind, f.target, f.source, h("label", {}, "from ", f.from), h("label", {}, "to ", f.to), h("button", { type: "submit" }, "Filter")),
      err,
      h("table", { class: "grid", id: "audit-table" }, h("thead", {}, h("tr", {}, ["Time", "Kind", "Target", "Source", "User", "Result", "Detail"].map((t) => h("th", {}, t)))), body),
      more,
    );
    load(false);
    return {};
  },
};

// ------------------------------------------------------------------ users

const users = {
  role: "admin",
  mount(el) {
    const note = notice();
    const ubody = h("tbody");
    const body = h("tbody");
    const shown = h("pre", { class: "secret", id: "new-key" });
    const ROLES = ["viewer", "operator", "admin"];
    const enc = encodeURIComponent;
    const loadUsers = async () => {
      try {
        const r = await get("/api/users");
        replace(ubody, r.users.map((u) => {
          const role = h("select", { "data-write": "user-role", "aria-label": `role of ${u.name}` }, ROLES.map((x) => h("option", { value: x }, x)));
          role.value = u.role;
          role.onchange = () => act(note, `role of ${u.name} → ${role.value}`, () => api("PUT", `/api/users/${enc(u.name)}`, { role: role.value }))
            .then((ok) => { if (!ok) role.value = u.role; loadUsers(); });
          const pw = h("input", { type: "password", autocomplete: "new-password", placeholder: "new password (8+)", "data-field": "reset-password" });
          const reset = h("span", { class: "reset", hidden: true }, pw, " ",
            h("button", { "data-write": "user-reset-save", onclick: () => act(note, `reset the password of ${u.name}`, () => api("PUT", `/api/users/${enc(u.name)}`, { password: pw.value }))
              .then((ok) => { if (ok) { pw.value = ""; reset.hidden = true; } }) }, "Save"));
          const self = session && session.user === u.name;
          return h("tr", { "data-user": u.name }, h("td", {}, u.name, self ? h("span", { class: "muted small" }, " (you)") : ""), h("td", {}, role),
            h("td", {},
              h("button", { "data-write": "user-reset", onclick: () => { reset.hidden = !reset.hidden; if (!reset.hidden) pw.focus(); } }, "Reset password"), " ",
              h("button", { "data-write": "user-remove", onclick: () => confirm(`Remove user ${u.name}? Their sessions end at once.`) && act(note, `remove ${u.name}`, () => api("DELETE", `/api/users/${enc(u.name)}`)).then(loadUsers) }, "Remove"),
              " ", reset));
        }));
      } catch (x) {
        note.fail(x.message);
      }
    };
    const load = async () => {
      try {
        const r = await get("/api/apikeys");
        if (!r.apikeys.length) {
          replace(body, h("tr", {}, h("td", { class: "muted", colspan: 4 }, "No API keys.")));
          return;
        }
        replace(body, r.apikeys.map((k) => h("tr", { "data-key": k.name }, h("td", {}, k.name), h("td", {}, k.role), h("td", { class: "small" }, new Date(k.created).toLocaleString()),
          h("td", {}, h("button", { "data-write": "apikey-revoke", onclick: () => confirm(`Revoke ${k.name}?`) && act(note, `revoke ${k.name}`, async () => { await api("DELETE", `/api/apikeys/${encodeURIComponent(k.name)}`); load(); }) }, "Revoke")))));
      } catch (x) {
        note.fail(x.message);
      }
    };
    const uname = h("input", { id: "user-name", placeholder: "name", autocomplete: "off" });
    const urole = h("select", { id: "user-role" }, ROLES.map((r) => h("option", { value: r }, r)));
    const upass = h("input", { id: "user-password", type: "password", placeholder: "password (8+ characters)", autocomplete: "new-password" });
    const name = h("input", { id: "key-name", placeholder: "name" });
    const role = h("select", { id: "key-role" }, ROLES.map((r) => h("option", {}, r)));
    el.append(
      h("h1", {}, "Users and API keys"),
      note,
      h("section", { class: "card", id: "users" }, h("h2", {}, "Users"),
        h("table", { class: "grid", id: "users-table" }, h("thead", {}, h("tr", {}, ["Name", "Role", ""].map((t) => h("th", {}, t)))), ubody),
        h("form", { class: "write", onsubmit: (e) => {
          e.preventDefault();
          act(note, `add ${uname.value}`, () => post("/api/users", { name: uname.value, role: urole.value, password: upass.value }))
            .then((ok) => { if (ok) { uname.value = ""; upass.value = ""; loadUsers(); } });
        } }, uname, urole, upass, h("button", { type: "submit", "data-write": "user-add", id: "user-add" }, "Add user")),
        h("p", { class: "muted small" }, "Roles: viewer reads, operator commands points and switches outputs, admin changes routes, profiles, users and keys (docs/security.md). A role change or a password reset ends that user's sessions. The last admin cannot be removed or demoted. The same users log in to Haystack (SCRAM); on the server: castpoint user add|list|remove.")),
      h("section", { class: "card" }, h("h2", {}, "API keys"),
        h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Name", "Role", "Created", ""].map((t) => h("th", {}, t)))), body),
        h("div", { class: "write" }, name, role, h("button", { "data-write": "apikey-add", onclick: () => act(note, `create ${name.value}`, async () => {
          const r = await post("/api/apikeys", { name: name.value, role: role.value });
          shown.textContent = `${r.name}: ${r.key}\n(shown once: copy it now)`;
          load();
        }) }, "Create key")), shown),
    );
    loadUsers();
    load();
    return {};
  },
};

// ------------------------------------------------------------------ links

const links = {
  mount(el) {
    const out = h("pre", { class: "export", id: "export" });
    const note = notice();
    /**
     * Fetches `path` with the session's token (a plain link cannot send it)
     * and shows it in the page; `save` also saves it as the file the server
     * names (Content-Disposition), through a Blob URL: the token never goes
     * into a URL.
     */
    const open = (path, save) => async (e) => {
      e.preventDefault();
      out.textContent = "…";
      note.className = "notice";
      note.textContent = "";
      try {
        const r = await fetch(path, { headers: session ? { authorization: `Bearer ${session.token}` } : {} });
        const t = await r.text();
        if (!r.ok) {
          let m = `HTTP ${r.status}`;
          try {
            m = JSON.parse(t).error || m;
          } catch {
            // Not JSON: the status says it.
          }
          throw new Error(m);
        }
        out.textContent = t.length > 200000 ? `${t.slice(0, 200000)}\n…` : t;
        out.dataset.path = path;
        if (save) {
          const name = (/filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "") || [])[1] || path.split("/").pop();
          const url = URL.createObjectURL(new Blob([t], { type: r.headers.get("content-type") || "text/plain" }));
          const a = h("a", { href: url, download: name, hidden: true });
          document.body.append(a);
          a.click();
          a.remove();
          setTimeout(() => URL.revokeObjectURL(url), 10000);
          note.ok(`saved ${name}`);
        }
      } catch (x) {
        out.textContent = "";
        note.fail(`${path}: ${x.message}`);
      }
    };
    const link = (path, id, save) => h("a", { href: path, id, onclick: open(path, save) }, path);
    el.append(
      h("h1", {}, "API and exports"),
      h("h2", {}, "API"),
      h("ul", {},
        h("li", {}, h("a", { href: "/api/openapi.json", target: "_blank", id: "link-openapi" }, "/api/openapi.json"), " — the OpenAPI document (every operation with the role it needs; public)"),
        h("li", {}, link("/metrics", "link-metrics", false), " — Prometheus exposition (viewer: fetched here with your session and shown below)"),
        h("li", {}, link("/stats", "link-stats", false), " — service statistics"),
        h("li", {}, "Haystack: ", h("code", {}, "/api/haystack"), " (Haystack 4, its own SCRAM login; docs/haystack.md)")),
      h("h2", {}, "Exports"),
      h("p", { class: "muted small" }, "Generated from the running configuration, the same files as castpoint export ede|modbus-map on the server (viewer role). A click saves the file and shows it below."),
      h("ul", {},
        h("li", {}, link("/api/export/ede.csv", "link-ede", true), " — BACnet EDE file (engineering data exchange) for the BMS's import"),
        h("li", {}, link("/api/export/ede-states.csv", "link-ede-states", true), " — the EDE file's state texts"),
        h("li", {}, link("/api/export/modbus-map.csv", "link-modbus-csv", true), " — Modbus register map, every reserved route slot included, for tag import"),
        h("li", {}, link("/api/export/modbus-map.md", "link-modbus-md", true), " — the same map as a readable document (the address rule of route blocks)")),
      note,
      out,
    );
    return {};
  },
};

export const VIEWS = { overview, routes, route: routeDetail, points, audit, users, links };

