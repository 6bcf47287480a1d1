//! Wiring: builds the point database from the config, binds and spawns every part, and owns shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::points::{DbOptions, Maps, PointDb, Quality, Value};

/// Addresses the running server actually bound (tests bind port 0).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub http: Option<SocketAddr>,
    pub bacnet: Option<SocketAddr>,
    pub modbus: Option<SocketAddr>,
}

/// A running castpoint.
pub struct App {
    pub db: PointDb,
    /// The streaming router (routes, inputs, outputs, stats, events).
    pub engine: crate::engine::Engine,
    pub maps: Arc<Maps>,
    pub addrs: BoundAddrs,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl App {
    /// Builds the point database and starts every enabled part. A part that
    /// cannot start (a port in use) is logged and reflected in Communication
    /// Status; it never takes the others down.
    pub async fn start(cfg: Config) -> anyhow::Result<App> {
        let db = PointDb::new(cfg.points.clone(), cfg.site.clone(), DbOptions::default());
        let maps = Arc::new(cfg.maps.clone());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut addrs = BoundAddrs::default();
        let mut faults: Vec<String> = Vec::new();
        // Created before the HTTP server so its HTTP-TS/HLS routes can be merged.
        let engine = crate::engine::Engine::new(cfg.server.data_dir.clone(), &shutdown);

        if cfg.server.http.enabled {
            match TcpListener::bind(cfg.server.http.bind).await {
                Ok(l) => {
                    addrs.http = l.local_addr().ok();
                    let state = ApiState {
                        db: db.clone(),
                        maps: maps.clone(),
                        write_priority: cfg.server.http.write_priority,
                    };
                    let router = api::router(state).merge(engine.router());
                    let token = shutdown.clone();
                    tasks.spawn(async move {
                        let svc = router.into_make_service_with_connect_info::<SocketAddr>();
                        if let Err(e) = axum::serve(l, svc)
                            .with_graceful_shutdown(token.cancelled_owned())
                            .await
                        {
                            tracing::error!("http server stopped: {e}");
                        }
                    });
                }
                Err(e) => faults.push(format!("http {}: {e}", cfg.server.http.bind)),
            }
        }

        // --- modbus: start (owned by src/protocols/modbus) ---
        // --- modbus: end ---

        // --- bacnet: start (owned by src/protocols/bacnet) ---
        // --- bacnet: end ---

        // --- haystack: start (owned by src/protocols/haystack) ---
        // --- haystack: end ---

        // --- engine: start (owned by src/engine) ---
        match crate::config::routes::parse(&cfg.origin, &cfg.server) {
            Ok(spec) => engine.apply(spec).await,
            Err(errs) => {
                for e in errs {
                    faults.push(format!("engine: {e}"));
                }
            }
        }
        {
            let (e, d, token) = (engine.clone(), db.clone(), shutdown.clone());
            tasks.spawn(async move {
                crate::engine::bridge::run(e.clone(), d, token).await;
                // Shutdown: stop every route and wait for sockets to close.
                e.stop().await;
            });
        }
        // --- engine: end ---

        // --- telemetry: start (owned by src/telemetry) ---
        // --- telemetry: end ---

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
            engine,
            maps,
            addrs,
            shutdown,
            tasks,
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
