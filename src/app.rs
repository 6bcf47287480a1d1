//! Wiring: builds the point database from the config, binds and spawns every part, and owns shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::persist::{DataDirLock, PersistConfig, Store};
use crate::points::{DbOptions, Maps, PointDb, Quality, Value};
use crate::protocols::haystack;

/// Addresses the running server actually bound (tests bind port 0).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub http: Option<SocketAddr>,
    pub bacnet: Option<SocketAddr>,
    pub modbus: Option<SocketAddr>,
    /// RTMP ingest listener (OBS-style publishers).
    pub rtmp: Option<SocketAddr>,
}

/// A running castpoint.
pub struct App {
    pub db: PointDb,
    pub store: Arc<Store>,
    /// The streaming router (routes, inputs, outputs, stats, events).
    pub engine: crate::engine::Engine,
    pub maps: Arc<Maps>,
    pub addrs: BoundAddrs,
    /// The MQTT Sparkplug edge node's status, when `[mqtt] enabled`.
    pub mqtt: Option<Arc<crate::protocols::mqtt::Status>>,
    /// The alarm runtime (docs/alarms.md): every protocol's alarm view.
    pub alarms: crate::alarms::Alarms,
    /// Parts that did not start (a listener that failed to bind, ...):
    /// `castpoint run` prints `degraded: ...` instead of `ready` for them.
    pub faults: Vec<String>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Released when the App is dropped (after `stop`).
    _lock: DataDirLock,
}

/// What the parts started so far share while `App::start` wires them.
struct Wiring {
    db: PointDb,
    store: Arc<Store>,
    users: crate::auth::Users,
    maps: Arc<Maps>,
    engine: crate::engine::Engine,
    route_docs: Arc<parking_lot::Mutex<std::collections::BTreeMap<String, serde_json::Value>>>,
    has_stored_routes: bool,
    profiles: Arc<crate::api::profiles::Profiles>,
    caps: crate::netlimit::ListenerCaps,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    addrs: BoundAddrs,
    faults: Vec<String>,
    mqtt: Option<Arc<crate::protocols::mqtt::Status>>,
    /// Started in `wiring`, before any protocol, so each can subscribe to it.
    alarms: crate::alarms::Alarms,
    /// Routers other parts serve on the HTTP listener (Haystack): the
    /// listener is bound first, but served after every part added its own.
    extra_routes: Vec<axum::Router>,
}

/// The bound HTTP listener, served once every part has added its routes.
type HttpServer = (TcpListener, axum::Router, ApiState, crate::httpd::Options);

impl App {
    /// Builds the point database and starts every enabled part. A part that
    /// cannot start (a port in use) is logged and reflected in Communication
    /// Status; it never takes the others down.
    pub async fn start(cfg: Config) -> anyhow::Result<App> {
        crate::api::live::mark_start();
        let (db, store, lock) = start_store(&cfg)?;
        let mut w = wiring(&cfg, db, store)?;
        let http = start_http(&cfg, &mut w).await;
        start_modbus(&cfg, &mut w).await;
        start_bacnet(&cfg, &mut w).await;
        start_haystack(&cfg, &mut w);
        start_alarms(&w);
        start_engine(&cfg, &mut w).await;
        start_rtmp(&cfg, &mut w).await;
        start_media(&w).await;
        start_mqtt(&cfg, &mut w);
        start_telemetry(&cfg, &w);
        if let Some(h) = http {
            serve_http(h, &mut w);
        }
        Ok(w.finish(lock))
    }

    /// Token that stops every part when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every part and waits for them to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }

    /// Waits until every part has finished (after the token is cancelled).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// The point database and the store: commands are restored and durable,
/// history loaded, before any protocol can read or write them. One server
/// per data dir: the lock is taken before the store is touched, and held
/// for the life of the App.
fn start_store(cfg: &Config) -> anyhow::Result<(PointDb, Arc<Store>, DataDirLock)> {
    let s = &cfg.server;
    let pcfg = PersistConfig::new(&s.audit, &s.history);
    let db = PointDb::with_routes(
        cfg.points.clone(),
        cfg.site.clone(),
        DbOptions {
            history_retention: pcfg.history_retention,
            ..DbOptions::default()
        },
        cfg.route_template.clone(),
    );
    let lock = DataDirLock::acquire(&s.data_dir)?;
    let opts = crate::persist::StoreOptions {
        allow_insecure_permissions: s.allow_insecure_permissions,
    };
    let store = Arc::new(Store::open_with(&s.data_dir, pcfg.audit_retention, &opts)?);
    let restored = store.restore(&db)?;
    let since = chrono::Utc::now()
        - chrono::Duration::from_std(pcfg.history_retention).unwrap_or(chrono::Duration::days(7));
    // Route blocks too (history is kept per slot, present or not); only
    // points that have stored samples cost a query.
    let with_history = store.history_points()?;
    for id in db.all_ids().collect::<Vec<_>>() {
        if let Some(def) = db.def(id).filter(|d| with_history.contains_key(&d.id)) {
            for h in store.load_history(&def.id, def.kind, since)? {
                db.insert_history(id, h);
            }
        }
    }
    db.set_persister(store.clone());
    tracing::info!(
        "state store {} (schema v{}): {restored} command arrays restored",
        store.path.display(),
        store.schema_version()
    );
    Ok((db, store, lock))
}

/// Users, the engine, the desired routes and profiles (the config's,
/// overlaid with what the operator API stored), listener caps, and the
/// history flusher.
fn wiring(cfg: &Config, db: PointDb, store: Arc<Store>) -> anyhow::Result<Wiring> {
    let s = &cfg.server;
    let users = crate::auth::Users::new(store.clone(), s.api.token_ttl)?;
    if !users.has_credentials() && !s.api.require_auth {
        tracing::warn!(
            "no users: the REST API accepts writes from loopback only, without a token, until one is added (castpoint user add NAME --role admin)"
        );
    }
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(crate::persist::history_flusher(
        store.clone(),
        db.clone(),
        s.history.retention,
        std::time::Duration::from_secs(10),
        shutdown.clone(),
    ));
    // The alarm runtime judges every alarm-capable point (server and
    // route blocks) from the first value on.
    let alarms = crate::alarms::Alarms::from_db(
        &db,
        &crate::alarms::config::effective(&s.notification_class),
    );
    // Durable before it runs: the SQLite store and the restored states
    // (an active or unacknowledged alarm survives a restart), then the
    // webhooks of the notification classes (docs/alarms.md).
    crate::persist::alarms::install(&store, &db, &alarms)?;
    crate::alarms::webhook::spawn(
        alarms.clone(),
        crate::alarms::config::webhooks(&crate::alarms::config::effective(&s.notification_class)),
        shutdown.clone(),
        &tasks,
    );
    // The runtime itself starts in `App::start` once the protocols have
    // subscribed (`start_alarms`).
    // Created before the HTTP server so its HTTP-TS/HLS routes can be merged.
    let engine = crate::engine::Engine::new(s.data_dir.clone(), &shutdown);
    let stored_routes = store.routes()?;
    let has_stored_routes = !stored_routes.is_empty();
    let tables: Vec<_> = s.routes.iter().map(|r| &r.table).collect();
    let docs = crate::api::routes::initial_docs(&tables, stored_routes);
    let profiles = crate::api::profiles::Profiles::new(&s.media, &s.profile, store.profiles()?);
    // Listener caps fitted under the open-file limit (raised to the hard
    // limit first), so a flood of one listener cannot starve the others.
    let caps = crate::netlimit::ListenerCaps::fit(
        s.http.enabled.then(|| crate::httpd::caps(&s.http)),
        s.modbus
            .enabled
            .then(|| crate::protocols::modbus::caps(&s.modbus)),
        s.rtmp.enabled.then(|| s.rtmp.caps()),
    );
    Ok(Wiring {
        db,
        store,
        users,
        maps: Arc::new(cfg.maps.clone()),
        engine,
        route_docs: Arc::new(parking_lot::Mutex::new(docs)),
        has_stored_routes,
        profiles: Arc::new(profiles),
        caps,
        shutdown,
        tasks,
        addrs: BoundAddrs::default(),
        faults: Vec::new(),
        mqtt: None,
        alarms,
        extra_routes: Vec::new(),
    })
}

/// Binds the HTTP listener (served later by `serve_http`).
async fn start_http(cfg: &Config, w: &mut Wiring) -> Option<HttpServer> {
    let h = &cfg.server.http;
    if !h.enabled {
        return None;
    }
    let l = match TcpListener::bind(h.bind).await {
        Ok(l) => l,
        Err(e) => {
            w.faults.push(format!("http {}: {e}", h.bind));
            return None;
        }
    };
    let state = ApiState {
        db: w.db.clone(),
        maps: w.maps.clone(),
        write_priority: h.write_priority,
        store: Some(w.store.clone()),
        users: Some(w.users.clone()),
        api: cfg.server.api.clone(),
        engine: Some(w.engine.clone()),
        route_docs: w.route_docs.clone(),
        route_defaults: cfg.server.route_defaults,
        profiles: Some(w.profiles.clone()),
        exports: Some(api::exports::Sources::from_config(
            cfg,
            api::exports::Writers {
                ede: crate::exports::ede_live,
                modbus_csv: crate::protocols::modbus::export_csv,
                modbus_md: crate::protocols::modbus::export_markdown,
            },
        )),
        alarms: Some(w.alarms.clone()),
    };
    match crate::httpd::Options::from_section(h, w.caps.http) {
        Ok(o) => {
            w.addrs.http = l.local_addr().ok();
            let router = api::router(state.clone()).merge(w.engine.router());
            Some((l, router, state, o))
        }
        Err(e) => {
            // Not served: not announced as listening either.
            w.faults.push(format!("http {}: {e}", h.bind));
            None
        }
    }
}

// --- modbus: start (owned by src/protocols/modbus) ---
async fn start_modbus(cfg: &Config, w: &mut Wiring) {
    let m = &cfg.server.modbus;
    if !m.enabled {
        return;
    }
    let started = crate::protocols::modbus::start(
        m,
        w.db.clone(),
        &w.maps.modbus,
        w.caps.modbus,
        Some(w.alarms.clone()),
        w.shutdown.clone(),
        &w.tasks,
    )
    .await;
    match started {
        Ok(a) => w.addrs.modbus = Some(a),
        Err(e) => w.faults.push(format!("modbus {}: {e}", m.bind)),
    }
}
// --- modbus: end ---

// --- bacnet: start (owned by src/protocols/bacnet) ---
async fn start_bacnet(cfg: &Config, w: &mut Wiring) {
    let b = &cfg.server.bacnet;
    if !b.enabled {
        return;
    }
    let rule = cfg.server.route_points.bacnet_rule();
    let started = crate::protocols::bacnet::start(
        crate::protocols::bacnet::DeviceSetup {
            cfg: b,
            route_rule: rule,
            data_dir: &cfg.server.data_dir,
        },
        w.db.clone(),
        w.maps.clone(),
        Some(crate::protocols::bacnet::AlarmSetup {
            alarms: w.alarms.clone(),
            classes: crate::protocols::bacnet::alarms::class_defs(&cfg.server.notification_class),
        }),
        w.shutdown.clone(),
        &w.tasks,
    )
    .await;
    match started {
        Ok(a) => w.addrs.bacnet = Some(a),
        Err(e) => w.faults.push(format!("bacnet {}: {e}", b.bind)),
    }
}
// --- bacnet: end ---

// --- haystack: start (owned by src/protocols/haystack) ---
/// Haystack ops under `/api/haystack` on the HTTP listener, with the shared
/// user store consulted after `[haystack]`'s own users.
fn start_haystack(cfg: &Config, w: &mut Wiring) {
    if !cfg.server.haystack.enabled || !cfg.server.http.enabled {
        return;
    }
    let settings = match cfg.server.haystack.settings() {
        Ok(s) => s,
        Err(errs) => {
            let f = errs.into_iter().map(|e| format!("haystack: haystack.{e}"));
            w.faults.extend(f);
            return;
        }
    };
    let u = w.users.clone();
    let lookup: haystack::auth::UserLookup = Arc::new(move |name: &str| u.scram_user(name));
    let st = w.store.clone();
    let on_login: haystack::auth::LoginHook = Arc::new(move |user, peer, ok| {
        let p = crate::points::Protocol::Haystack;
        crate::api::auth::audit_login(&st, p, user, peer, ok);
    });
    let db = w.db.clone();
    let ctx = haystack::Ctx::with_users(db, &w.maps, settings, Some(lookup), Some(on_login));
    ctx.set_alarms(w.alarms.clone());
    let r = axum::Router::new().nest("/api/haystack", haystack::router(ctx));
    w.extra_routes.push(r);
}
// --- haystack: end ---

// --- engine: start (owned by src/engine) ---
/// The routes (the config's, or the operator API's stored set), the point
/// bridge, and the audit of router events.
async fn start_engine(cfg: &Config, w: &mut Wiring) {
    let mut spec = crate::config::routes::engine_spec(&cfg.server);
    if w.has_stored_routes {
        spec.routes = crate::api::routes::specs(&w.route_docs.lock(), &cfg.server.route_defaults);
    }
    w.engine.apply(spec).await;
    let (e, d, token) = (w.engine.clone(), w.db.clone(), w.shutdown.clone());
    // Route point blocks exist before `ready` (issue 20).
    let mut keeper = crate::points::routes::SlotKeeper::new(Some(w.store.clone()));
    crate::engine::bridge::sync_blocks(&w.engine, &w.db, &mut keeper).await;
    // Router counters are telemetry too: `[telemetry] enabled = false`
    // stops them with the host sampler (commands still apply).
    let publish = cfg.server.telemetry.enabled;
    w.tasks.spawn(async move {
        crate::engine::bridge::run(e.clone(), d, token, publish, keeper).await;
        // Shutdown: stop every route and wait for sockets to close.
        e.stop().await;
    });
    let rx = w.engine.subscribe();
    let audit = audit_router_events(rx, w.store.clone(), w.shutdown.clone());
    w.tasks.spawn(audit);
}

/// Router events that matter to operators go to the audit log: restarts
/// and input switches (failover), with their reasons.
async fn audit_router_events(
    mut rx: tokio::sync::broadcast::Receiver<crate::engine::EngineEvent>,
    st: Arc<Store>,
    token: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = token.cancelled() => return,
            ev = rx.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} router events not audited (lagged)");
                continue;
            }
            Err(_) => return,
        };
        let kind = match &ev.kind {
            crate::engine::EventKind::Restarted => "restart",
            crate::engine::EventKind::InputSwitched { .. } => "failover",
            _ => continue,
        };
        let detail = serde_json::to_string(&ev).unwrap_or_default();
        let src = crate::points::Source::internal();
        if let Err(e) = st.record_event(kind, Some(&ev.route), &src, "ok", &detail) {
            tracing::warn!("router event not audited: {e}");
        }
    }
}
// --- engine: end ---

// --- rtmp: start (owned by src/media/rtmp) ---
async fn start_rtmp(cfg: &Config, w: &mut Wiring) {
    let rc = &cfg.server.rtmp;
    let reg = w.engine.rtmp_registry();
    if !rc.enabled {
        reg.set_server(Err("disabled ([rtmp] enabled = false)".into()));
        return;
    }
    match crate::media::rtmp::bind(rc).await {
        Ok(l) => {
            w.addrs.rtmp = l.local_addr().ok();
            if let Some(a) = w.addrs.rtmp {
                reg.set_server(Ok(a));
            }
            w.tasks.spawn(crate::media::rtmp::serve(
                l,
                rc.clone().with_caps(w.caps.rtmp),
                reg,
                w.tasks.clone(),
                w.shutdown.clone(),
            ));
        }
        Err(e) => {
            reg.set_server(Err(format!("bind {}: {e}", rc.bind)));
            w.faults.push(format!("rtmp {}: {e}", rc.bind));
        }
    }
}
// --- rtmp: end ---

// --- media: start (owned by src/media/ffmpeg) ---
/// Starts judging alarms. Only now: every protocol that distributes
/// transitions (BACnet's event notifications above all) has subscribed, so
/// the start-up transitions (a status still N/A, a restored fault) reach
/// them like any later one. Before, BACnet missed them and served an
/// Event_State with no committed transition for up to a second, which
/// GetEnrollmentSummary / GetAlarmSummary answered with
/// OPERATIONAL_PROBLEM.
fn start_alarms(w: &Wiring) {
    w.tasks.spawn(w.alarms.clone().run(w.shutdown.clone()));
}

/// The MQTT Sparkplug B edge node (src/protocols/mqtt), when enabled.
fn start_mqtt(cfg: &Config, w: &mut Wiring) {
    if let Some(mc) = &cfg.mqtt {
        match crate::protocols::mqtt::start(
            mc.clone(),
            w.db.clone(),
            Some(&cfg.server.data_dir),
            w.shutdown.clone(),
            &w.tasks,
        ) {
            Ok(s) => w.mqtt = Some(s),
            Err(e) => w.faults.push(format!("mqtt: {e}")),
        }
    }
}

async fn start_media(w: &Wiring) {
    // Children a crashed castpoint left behind (their parent pid is gone)
    // are killed before this one starts its own.
    let reaped = tokio::task::spawn_blocking(crate::media::ffmpeg::reap_stale)
        .await
        .unwrap_or_default();
    if !reaped.is_empty() {
        tracing::warn!("killed {} stale ffmpeg children: {reaped:?}", reaped.len());
    }
    // Stored profiles that no longer validate (after an upgrade) must not
    // take transcoding down: `Profiles::media` falls back to the file's.
    let m = w.profiles.media();
    tracing::info!(
        "media: ffmpeg {:?}, {} output profiles",
        m.ffmpeg.display().to_string(),
        m.profiles.len()
    );
    w.engine.set_media(m).await;
}
// --- media: end ---

// --- telemetry: start (owned by src/telemetry) ---
fn start_telemetry(cfg: &Config, w: &Wiring) {
    let t = &cfg.server.telemetry;
    if !t.enabled {
        return;
    }
    let gpu = crate::telemetry::gpu_source(t);
    let dir = cfg.server.data_dir.clone();
    let sampler = crate::telemetry::Sampler::new(w.db.clone(), t.clone(), gpu, dir);
    w.tasks.spawn(sampler.run(w.shutdown.clone()));
}
// --- telemetry: end ---

/// Serves the HTTP listener with every part's routes under one
/// authorization layer (src/httpd.rs: header-read timeout, caps, HTTPS).
fn serve_http((l, mut router, state, opts): HttpServer, w: &mut Wiring) {
    for r in w.extra_routes.drain(..) {
        router = router.merge(r);
    }
    let router = api::guard::layer(router, state);
    let serve = crate::httpd::serve(l, router, opts, w.shutdown.clone(), w.tasks.clone());
    w.tasks.spawn(serve);
}

impl Wiring {
    /// Communication Status (OK when every enabled listener is bound), the
    /// faults logged, and the running App.
    fn finish(self, lock: DataDirLock) -> App {
        if let Some(id) = self.db.lookup("communication_status") {
            let (v, r) = if self.faults.is_empty() {
                (Value::Enum(1), None)
            } else {
                (Value::Enum(2), Some(self.faults.join("; ")))
            };
            let _ = self.db.set(id, Some(v), Quality::Ok, r.as_deref());
        }
        for f in &self.faults {
            tracing::error!("cannot start {f}");
        }
        self.tasks.close();
        App {
            db: self.db,
            store: self.store,
            engine: self.engine,
            maps: self.maps,
            addrs: self.addrs,
            mqtt: self.mqtt,
            alarms: self.alarms,
            faults: self.faults,
            shutdown: self.shutdown,
            tasks: self.tasks,
            _lock: lock,
        }
    }
}
