//! Wiring: builds the point database from the config, binds and spawns every part, and owns shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::persist::Store;
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
    /// Parts that did not start (a listener that failed to bind, ...):
    /// `castpoint run` prints `degraded: ...` instead of `ready` for them.
    pub faults: Vec<String>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Released when the App is dropped (after `stop`).
    _lock: crate::persist::DataDirLock,
}

impl App {
    /// Builds the point database and starts every enabled part. A part that
    /// cannot start (a port in use) is logged and reflected in Communication
    /// Status; it never takes the others down.
    pub async fn start(cfg: Config) -> anyhow::Result<App> {
        crate::api::live::mark_start();
        let pcfg = crate::persist::PersistConfig::parse(&cfg.origin, &cfg.server.extra)
            .map_err(|e| anyhow::anyhow!(crate::config::ConfigErrors(e)))?;
        let db = PointDb::with_routes(
            cfg.points.clone(),
            cfg.site.clone(),
            DbOptions {
                history_retention: pcfg.history_retention,
                ..DbOptions::default()
            },
            cfg.route_template.clone(),
        );
        // The store comes first: commands are restored and durable before
        // any protocol can read or write them.
        // One server per data dir: the lock is taken before the store is
        // touched, and held for the life of the App.
        let lock = crate::persist::DataDirLock::acquire(&cfg.server.data_dir)?;
        let store = Arc::new(Store::open_with(
            &cfg.server.data_dir,
            pcfg.audit_retention,
            &crate::persist::StoreOptions {
                allow_insecure_permissions: cfg.server.allow_insecure_permissions,
            },
        )?);
        let restored = store.restore(&db)?;
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(pcfg.history_retention)
                .unwrap_or(chrono::Duration::days(7));
        // Route blocks too (history is kept per slot, present or not);
        // only points that have stored samples cost a query.
        let with_history = store.history_points()?;
        for id in db.all_ids().collect::<Vec<_>>() {
            if let Some(def) = db.def(id).filter(|d| with_history.contains_key(&d.id)) {
                for s in store.load_history(&def.id, def.kind, since)? {
                    db.insert_history(id, s);
                }
            }
        }
        db.set_persister(store.clone());
        let api_cfg = crate::api::auth::ApiConfig::parse(&cfg.origin, cfg.server.extra.get("api"))
            .map_err(|e| anyhow::anyhow!(crate::config::ConfigErrors(e)))?;
        let users = crate::auth::Users::new(store.clone(), api_cfg.token_ttl)?;
        if !users.has_credentials() && !api_cfg.require_auth {
            tracing::warn!(
                "no users: the REST API accepts writes from loopback only, without a token, until one is added (castpoint user add NAME --role admin)"
            );
        }
        tracing::info!(
            "state store {} (schema v{}): {restored} command arrays restored",
            store.path.display(),
            store.schema_version()
        );
        let tcfg = crate::telemetry::TelemetryConfig::parse(
            &cfg.origin,
            cfg.server.extra.get("telemetry"),
        )
        .map_err(|e| anyhow::anyhow!(crate::config::ConfigErrors(e)))?;
        let maps = Arc::new(cfg.maps.clone());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(crate::persist::history_flusher(
            store.clone(),
            db.clone(),
            pcfg.history_retention,
            std::time::Duration::from_secs(10),
            shutdown.clone(),
        ));
        let mut addrs = BoundAddrs::default();
        let mut faults: Vec<String> = Vec::new();
        // Created before the HTTP server so its HTTP-TS/HLS routes can be merged.
        let engine = crate::engine::Engine::new(cfg.server.data_dir.clone(), &shutdown);
        // Desired state of the routes: the config's, overlaid with what the
        // operator API stored.
        let stored_routes = store.routes()?;
        let has_stored_routes = !stored_routes.is_empty();
        let route_docs = Arc::new(parking_lot::Mutex::new(crate::api::routes::initial_docs(
            &cfg.server.routes,
            stored_routes,
        )));

        // Output profiles: the config's, overlaid with what the API stored.
        let profiles = Arc::new(crate::api::profiles::Profiles::new(
            &cfg.origin,
            &cfg.server.extra,
            store.profiles()?,
        ));

        // Routers other parts serve on the HTTP listener (Haystack, engine
        // HTTP outputs): the listener is bound here, but the server is
        // spawned after every part's block so each can add its routes first.
        let mut extra_routes: Vec<axum::Router> = Vec::new();
        let mut http_server = None;
        // Listener caps fitted under the open-file limit (raised to the hard
        // limit first), so a flood of one listener cannot starve the others.
        let caps = crate::netlimit::ListenerCaps::fit(
            cfg.server
                .http
                .enabled
                .then(|| crate::httpd::caps(&cfg.server.http)),
            cfg.server
                .modbus
                .enabled
                .then(|| crate::protocols::modbus::caps(&cfg.server.modbus)),
            crate::media::rtmp::RtmpConfig::parse(&cfg.origin, &cfg.server.extra)
                .ok()
                .filter(|r| r.enabled)
                .map(|r| r.caps()),
        );
        if cfg.server.http.enabled {
            match TcpListener::bind(cfg.server.http.bind).await {
                Ok(l) => {
                    addrs.http = l.local_addr().ok();
                    let state = ApiState {
                        db: db.clone(),
                        maps: maps.clone(),
                        write_priority: cfg.server.http.write_priority,
                        store: Some(store.clone()),
                        users: Some(users.clone()),
                        api: api_cfg.clone(),
                        engine: Some(engine.clone()),
                        route_docs: route_docs.clone(),
                        profiles: Some(profiles.clone()),
                    };
                    match crate::httpd::Options::from_section(&cfg.server.http, caps.http) {
                        Ok(o) => {
                            let router = api::router(state.clone()).merge(engine.router());
                            http_server = Some((l, router, state, o))
                        }
                        Err(e) => {
                            // Not served: not announced as listening either.
                            addrs.http = None;
                            faults.push(format!("http {}: {e}", cfg.server.http.bind))
                        }
                    }
                }
                Err(e) => faults.push(format!("http {}: {e}", cfg.server.http.bind)),
            }
        }

        // --- modbus: start (owned by src/protocols/modbus) ---
        if cfg.server.modbus.enabled {
            use crate::protocols::modbus;
            faults.extend(modbus::config_problems(&cfg.server.modbus));
            match modbus::start(
                &cfg.server.modbus,
                db.clone(),
                &maps.modbus,
                caps.modbus,
                shutdown.clone(),
                &tasks,
            )
            .await
            {
                Ok(a) => addrs.modbus = Some(a),
                Err(e) => faults.push(format!("modbus {}: {e}", cfg.server.modbus.bind)),
            }
        }
        // --- modbus: end ---

        // --- bacnet: start (owned by src/protocols/bacnet) ---
        if cfg.server.bacnet.enabled {
            match crate::protocols::bacnet::start(
                &cfg.server.bacnet,
                &cfg.server.data_dir,
                db.clone(),
                maps.clone(),
                shutdown.clone(),
                &tasks,
            )
            .await
            {
                Ok(a) => addrs.bacnet = Some(a),
                Err(e) => faults.push(format!("bacnet {}: {e}", cfg.server.bacnet.bind)),
            }
        }
        // --- bacnet: end ---

        // --- haystack: start (owned by src/protocols/haystack) ---
        if cfg.server.haystack.enabled && cfg.server.http.enabled {
            match haystack::Settings::from_raw(&cfg.server.haystack.raw) {
                Ok(settings) => {
                    let u = users.clone();
                    let lookup: haystack::auth::UserLookup =
                        Arc::new(move |name: &str| u.scram_user(name));
                    let st = store.clone();
                    let on_login: haystack::auth::LoginHook = Arc::new(move |user, peer, ok| {
                        let p = crate::points::Protocol::Haystack;
                        crate::api::auth::audit_login(&st, p, user, peer, ok);
                    });
                    let ctx = haystack::Ctx::with_users(
                        db.clone(),
                        &maps,
                        settings,
                        Some(lookup),
                        Some(on_login),
                    );
                    extra_routes
                        .push(axum::Router::new().nest("/api/haystack", haystack::router(ctx)));
                }
                Err(errs) => faults.extend(errs.into_iter().map(|e| format!("haystack: {e}"))),
            }
        }
        // --- haystack: end ---

        // --- engine: start (owned by src/engine) ---
        match crate::config::routes::parse(&cfg.origin, &cfg.server) {
            Ok(mut spec) => {
                if has_stored_routes {
                    spec.routes = crate::api::routes::specs(&route_docs.lock());
                }
                engine.apply(spec).await
            }
            Err(errs) => {
                for e in errs {
                    faults.push(format!("engine: {e}"));
                }
            }
        }
        {
            let (e, d, token) = (engine.clone(), db.clone(), shutdown.clone());
            // Route point blocks exist before `ready` (issue 20).
            let mut keeper = crate::points::routes::SlotKeeper::new(Some(store.clone()));
            crate::engine::bridge::sync_blocks(&engine, &db, &mut keeper).await;
            // Router counters are telemetry too: `[telemetry] enabled =
            // false` stops them with the host sampler (commands still apply).
            let publish = tcfg.enabled;
            tasks.spawn(async move {
                crate::engine::bridge::run(e.clone(), d, token, publish, keeper).await;
                // Shutdown: stop every route and wait for sockets to close.
                e.stop().await;
            });
        }
        // Router events that matter to operators go to the audit log:
        // restarts and input switches (failover), with their reasons.
        {
            let mut rx = engine.subscribe();
            let (st, token) = (store.clone(), shutdown.clone());
            tasks.spawn(async move {
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
            });
        }
        // --- engine: end ---

        // --- rtmp: start (owned by src/media/rtmp) ---
        match crate::media::rtmp::RtmpConfig::parse(&cfg.origin, &cfg.server.extra) {
            Ok(rc) if rc.enabled => {
                let reg = engine.rtmp_registry();
                match crate::media::rtmp::bind(&rc).await {
                    Ok(l) => {
                        let addr = l.local_addr().ok();
                        addrs.rtmp = addr;
                        if let Some(a) = addr {
                            reg.set_server(Ok(a));
                        }
                        tasks.spawn(crate::media::rtmp::serve(
                            l,
                            rc.with_caps(caps.rtmp),
                            reg,
                            tasks.clone(),
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        reg.set_server(Err(format!("bind {}: {e}", rc.bind)));
                        faults.push(format!("rtmp {}: {e}", rc.bind));
                    }
                }
            }
            Ok(_) => engine
                .rtmp_registry()
                .set_server(Err("disabled ([rtmp] enabled = false)".into())),
            Err(errs) => faults.extend(errs.into_iter().map(|e| format!("rtmp: {e}"))),
        }
        // --- rtmp: end ---

        // --- media: start (owned by src/media/ffmpeg) ---
        {
            // Children a crashed castpoint left behind (their parent pid is
            // gone) are killed before this one starts its own.
            let reaped = tokio::task::spawn_blocking(crate::media::ffmpeg::reap_stale)
                .await
                .unwrap_or_default();
            if !reaped.is_empty() {
                tracing::warn!("killed {} stale ffmpeg children: {reaped:?}", reaped.len());
            }
            // Stored profiles that no longer validate (after an upgrade)
            // must not take transcoding down: fall back to the file's.
            let media = profiles.media().or_else(|errs| {
                for e in &errs {
                    tracing::error!("stored output profiles ignored: {e}");
                }
                crate::media::ffmpeg::Media::parse(&cfg.origin, &cfg.server.extra)
            });
            match media {
                Ok(m) => {
                    tracing::info!(
                        "media: ffmpeg {:?}, {} output profiles",
                        m.ffmpeg.display().to_string(),
                        m.profiles.len()
                    );
                    engine.set_media(m).await;
                }
                Err(errs) => faults.extend(errs.into_iter().map(|e| format!("media: {e}"))),
            }
        }
        // --- media: end ---

        // --- telemetry: start (owned by src/telemetry) ---
        {
            if tcfg.enabled {
                let gpu = crate::telemetry::gpu_source(&tcfg);
                let sampler = crate::telemetry::Sampler::new(
                    db.clone(),
                    tcfg,
                    gpu,
                    cfg.server.data_dir.clone(),
                );
                tasks.spawn(sampler.run(shutdown.clone()));
            }
        }
        // --- telemetry: end ---

        if let Some((l, mut router, state, opts)) = http_server {
            for r in extra_routes {
                router = router.merge(r);
            }
            // One authorization layer over every route, merged ones included.
            let router = api::guard::layer(router, state);
            // src/httpd.rs: header-read timeout, caps, HTTPS.
            tasks.spawn(crate::httpd::serve(
                l,
                router,
                opts,
                shutdown.clone(),
                tasks.clone(),
            ));
        }

        // Communication Status: OK when every enabled listener is bound.
        if let Some(id) = db.lookup("communication_status") {
            let (v, q, r) = if faults.is_empty() {
                (Value::Enum(1), Quality::Ok, None)
            } else {
                (Value::Enum(2), Quality::Ok, Some(faults.join("; ")))
            };
            let _ = db.set(id, Some(v), q, r.as_deref());
        }
        for f in &faults {
            tracing::error!("cannot start {f}");
        }
        tasks.close();
        Ok(App {
            db,
            store,
            engine,
            maps,
            addrs,
            faults,
            shutdown,
            tasks,
            _lock: lock,
        })
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
