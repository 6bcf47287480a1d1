//! The MQTT side of the edge node: one rumqttc connection per session (its own will with the session's bdSeq), broker failover with backoff, Primary Host STATE, and the hand-off of changes and commands to `node.rs`.
//!
//! A new `AsyncClient`/`EventLoop` is made for every connection attempt
//! rather than letting rumqttc reconnect by itself, because Sparkplug needs
//! a different will (NDEATH with the new bdSeq) on every CONNECT, and
//! nothing queued for the old connection may reach the broker before the
//! new NBIRTH. The event loop is polled in its own task: `EventLoop::poll`
//! is not cancel-safe (a request taken off the channel is lost if the
//! future is dropped mid-write), so it never sits in a `select!`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::points::{Change, PointDb};

use super::config::{Broker, MqttConfig};
use super::node::{Held, Node, Out};

/// How long data published just before a connection loss is kept, so it
/// can be sent again (as historical) after the reconnect: QoS 0 messages
/// still in rumqttc's queue or the socket when the broker went away are
/// otherwise lost. A host may see some of them twice.
const RESEND_WINDOW: Duration = Duration::from_secs(2);

/// Builds the rustls client config for `mqtts://` brokers (ring provider,
/// the configured CA only, optional client certificate).
pub fn tls_config(cfg: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let ca = cfg
        .ca_file
        .as_ref()
        .ok_or("mqtt.ca_file: needed for mqtts://")?;
    for c in CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("mqtt.ca_file: {}: {e}", ca.display()))?
    {
        let c = c.map_err(|e| format!("mqtt.ca_file: {}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("mqtt.ca_file: {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "mqtt.ca_file: {}: no CERTIFICATE in the file",
            ca.display()
        ));
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("mqtt: TLS: {e}"))?
    .with_root_certificates(roots);
    let c = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("mqtt.client_cert: {}: {e}", cert.display()))?;
            let pk = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("mqtt.client_key: {}: {e}", key.display()))?;
            b.with_client_auth_cert(chain, pk)
                .map_err(|e| format!("mqtt.client_key: {}: {e}", key.display()))?
        }
        _ => b.with_no_client_auth(),
    };
    Ok(Arc::new(c))
}

/// What the poller task forwards.
enum Ev {
    ConnAck(rumqttc::ConnectReturnCode),
    SubAck,
    Publish(String, bytes::Bytes),
    Lost(String),
}

/// Why a session ended.
enum End {
    Shutdown,
    /// The connection failed or was lost; `was_online` if births went out.
    Lost {
        was_online: bool,
    },
}

/// What one connection's event loop knows (see `Session::drive`).
struct Conn {
    ncmd: String,
    /// `spBv1.0/<group>/DCMD/<node>/`: a device command's topic is this
    /// plus the device name.
    dcmd_prefix: String,
    /// The Primary Host's STATE topic, when one is configured.
    state_topic: Option<String>,
    /// SUBACKs still to come (MAX until the subscriptions are sent).
    subacks_due: usize,
    host_online: bool,
    /// The births went out.
    online: bool,
}

impl Conn {
    fn new(node: &Node, cfg: &MqttConfig) -> Conn {
        let state_topic = cfg
            .primary_host_id
            .as_ref()
            .map(|h| format!("{}/STATE/{h}", super::node::NAMESPACE));
        Conn {
            ncmd: node.topic("NCMD", None),
            dcmd_prefix: format!("{}/", node.topic("DCMD", None)),
            // Without a Primary Host configured the node births at once.
            host_online: state_topic.is_none(),
            state_topic,
            subacks_due: usize::MAX,
            online: false,
        }
    }

    /// Subscribes to the commands (and the Primary Host's STATE); Err ends
    /// the session.
    async fn subscribe(&mut self, client: &AsyncClient) -> Result<(), End> {
        let mut subs = vec![self.ncmd.clone(), format!("{}+", self.dcmd_prefix)];
        subs.extend(self.state_topic.clone());
        self.subacks_due = subs.len();
        for s in subs {
            if client.subscribe(s, QoS::AtLeastOnce).await.is_err() {
                return Err(End::Lost { was_online: false });
            }
        }
        Ok(())
    }
}

/// Live facts about the node, for logs and tests.
#[derive(Debug, Default)]
pub struct Status {
    pub online: std::sync::atomic::AtomicBool,
    pub births: std::sync::atomic::AtomicU64,
}

pub struct Session {
    cfg: MqttConfig,
    db: PointDb,
    node: Node,
    tls: Option<Arc<rustls::ClientConfig>>,
    changes: broadcast::Receiver<Change>,
    /// Data published recently (see [`RESEND_WINDOW`]).
    recent: VecDeque<(Instant, Vec<Held>)>,
    /// Newest Primary Host STATE timestamp seen (older ones are ignored).
    state_ts: u64,
    /// Where the last bdSeq is kept (the data dir), if anywhere.
    bdseq_file: Option<std::path::PathBuf>,
    pub status: Arc<Status>,
}

impl Session {
    /// `data_dir`: where the bdSeq sequence is kept across restarts
    /// (`None`: it starts at 0 in every process).
    pub fn new(
        cfg: MqttConfig,
        db: PointDb,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Session, String> {
        let tls = if cfg.brokers.iter().any(|b| b.tls) {
            Some(tls_config(&cfg)?)
        } else {
            None
        };
        let mut node = Node::new(
            db.clone(),
            &cfg.group_id,
            &cfg.edge_node_id,
            cfg.command_priority,
            cfg.store_forward_max,
        );
        let bdseq_file = data_dir.map(super::bdseq::path);
        if let Some(last) = bdseq_file.as_deref().and_then(super::bdseq::load) {
            node.resume_bdseq(last);
        }
        Ok(Session {
            changes: db.subscribe(),
            cfg,
            db,
            node,
            tls,
            recent: VecDeque::new(),
            state_ts: 0,
            bdseq_file,
            status: Arc::new(Status::default()),
        })
    }

    fn options(&self, broker: &Broker, bdseq: u64) -> MqttOptions {
        let mut o = MqttOptions::new(self.cfg.client_id.clone(), broker.host.clone(), broker.port);
        o.set_keep_alive(self.cfg.keep_alive);
        o.set_clean_session(true);
        o.set_max_packet_size(self.cfg.max_incoming_packet, 64 * 1024 * 1024);
        let will = self.node.ndeath(bdseq);
        o.set_last_will(LastWill::new(
            will.topic,
            will.payload,
            QoS::AtLeastOnce,
            false,
        ));
        if let Some(u) = &self.cfg.username {
            o.set_credentials(u.clone(), self.cfg.password.clone().unwrap_or_default());
        }
        if broker.tls {
            if let Some(t) = &self.tls {
                o.set_transport(Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(t.clone()),
                ));
            }
        }
        o
    }

    /// Runs sessions until shutdown: connect, birth, report, and on loss
    /// hold changes while reconnecting (next broker on a failed connect).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let n = self.cfg.brokers.len().max(1);
        let mut idx = 0usize;
        let mut backoff = Duration::from_millis(250);
        loop {
            let Some(broker) = self.cfg.brokers.get(idx % n).cloned() else {
                return;
            };
            let bdseq = self.node.next_bdseq();
            // Stored before the CONNECT registers the will that carries it.
            if let Some(f) = &self.bdseq_file {
                if let Err(e) = super::bdseq::save(f, bdseq) {
                    tracing::warn!(
                        "mqtt: bdSeq not stored in {}: {e} (a restart may repeat it)",
                        f.display()
                    );
                }
            }
            tracing::info!(
                "mqtt: connecting to {}:{} as {}/{} (bdSeq {bdseq})",
                broker.host,
                broker.port,
                self.cfg.group_id,
                self.cfg.edge_node_id
            );
            match self.session(&broker, bdseq, &shutdown).await {
                End::Shutdown => return,
                End::Lost { was_online } => {
                    self.status
                        .online
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if was_online {
                        backoff = Duration::from_millis(250);
                    } else {
                        // Failover: the next attempt goes to the next broker.
                        idx += 1;
                    }
                }
            }
            // Back off, still recording changes.
            let until = tokio::time::Instant::now() + backoff;
            backoff = (backoff * 2).min(self.cfg.reconnect_max);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => break,
                    c = self.changes.recv() => self.on_change(c, None).await,
                }
            }
        }
    }

    /// One MQTT connection, from CONNECT to its loss (or shutdown).
    async fn session(&mut self, broker: &Broker, bdseq: u64, shutdown: &CancellationToken) -> End {
        let (client, mut el) = AsyncClient::new(self.options(broker, bdseq), 1024);
        let (tx, mut rx) = mpsc::channel::<Ev>(64);
        let poller = crate::tasks::spawn_owned(async move {
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ev::ConnAck(a.code),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Ev::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // Commands are dropped, not queued without bound,
                        // when the node is busy (a flood of NCMDs).
                        if tx.try_send(Ev::Publish(p.topic, p.payload)).is_err() {
                            tracing::warn!("mqtt: command dropped: the node is busy");
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => Ev::Lost(e.to_string()),
                };
                let lost = matches!(ev, Ev::Lost(_));
                if tx.send(ev).await.is_err() || lost {
                    return;
                }
            }
        });
        let end = self.drive(&client, &mut rx, bdseq, shutdown).await;
        if matches!(end, End::Shutdown) {
            // A clean goodbye: NDEATH first (spB 3.0 §7.3), then DISCONNECT
            // (which also cancels the will), and give them a moment to go.
            let d = self.node.ndeath(bdseq);
            let _ = client.try_publish(d.topic, QoS::AtLeastOnce, false, d.payload);
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while rx.recv().await.is_some() {}
            })
            .await;
        }
        poller.abort();
        // Whatever may not have left before the loss goes out again later.
        let cutoff = Instant::now().checked_sub(RESEND_WINDOW);
        let mut again = Vec::new();
        for (at, held) in self.recent.drain(..) {
            if cutoff.is_none_or(|c| at >= c) {
                again.extend(held);
            }
        }
        if !matches!(end, End::Shutdown) {
            self.node.requeue_front(again);
        }
        end
    }

    /// One connection's event loop: subscribe on CONNACK, birth once the
    /// subscriptions (and the Primary Host, if one is configured) are in,
    /// then publish changes and answer commands until the end.
    async fn drive(
        &mut self,
        client: &AsyncClient,
        rx: &mut mpsc::Receiver<Ev>,
        bdseq: u64,
        shutdown: &CancellationToken,
    ) -> End {
        let mut conn = Conn::new(&self.node, &self.cfg);
        // Route blocks appearing, going or changing owner (None: no route
        // template, no devices).
        let mut blocks = self.db.subscribe_blocks();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                ev = rx.recv() => ev,
                c = self.changes.recv() => {
                    self.on_change(c, conn.online.then_some(client)).await;
                    continue;
                }
                r = blocks_changed(&mut blocks) => {
                    if r.is_err() {
                        blocks = None;
                    } else if conn.online {
                        if let Err(end) = self.sync_devices(client).await {
                            return end;
                        }
                    }
                    continue;
                }
            };
            let Some(ev) = ev else {
                return End::Lost {
                    was_online: conn.online,
                };
            };
            if let Err(end) = self.on_event(client, bdseq, &mut conn, ev).await {
                return end;
            }
            if !conn.online && conn.subacks_due == 0 && conn.host_online {
                if let Err(end) = self.go_online(client, bdseq, &mut conn).await {
                    return end;
                }
            }
        }
    }

    /// Publishes the device births and deaths for route blocks that
    /// changed; Err ends the session.
    async fn sync_devices(&mut self, client: &AsyncClient) -> Result<(), End> {
        // Changes already queued go out under the devices they belong to
        // before the devices change.
        self.drain_changes(client).await;
        for m in self.node.sync_devices() {
            if !publish(client, m).await {
                return Err(End::Lost { was_online: true });
            }
        }
        Ok(())
    }

    /// One event of the connection; Err ends the session.
    async fn on_event(
        &mut self,
        client: &AsyncClient,
        bdseq: u64,
        conn: &mut Conn,
        ev: Ev,
    ) -> Result<(), End> {
        match ev {
            Ev::Lost(e) => {
                tracing::warn!("mqtt: connection lost: {e}");
                return Err(End::Lost {
                    was_online: conn.online,
                });
            }
            Ev::ConnAck(code) => {
                if code != rumqttc::ConnectReturnCode::Success {
                    tracing::warn!("mqtt: broker refused the connection: {code:?}");
                    return Err(End::Lost { was_online: false });
                }
                conn.subscribe(client).await?;
            }
            Ev::SubAck => {
                conn.subacks_due = conn.subacks_due.saturating_sub(1);
            }
            Ev::Publish(topic, payload) => {
                self.on_publish(client, bdseq, conn, &topic, &payload)
                    .await?;
            }
        }
        Ok(())
    }

    /// A message on a subscribed topic: the Primary Host's STATE, a node
    /// command or a device command; Err ends the session.
    async fn on_publish(
        &mut self,
        client: &AsyncClient,
        bdseq: u64,
        conn: &mut Conn,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), End> {
        if Some(topic) == conn.state_topic.as_deref() {
            match self.host_state(payload) {
                Some(true) => conn.host_online = true,
                Some(false) => {
                    conn.host_online = false;
                    if conn.online {
                        // spB 3.0 §7.2: the Primary Host went away: NDEATH,
                        // disconnect, go on with the next server.
                        tracing::warn!("mqtt: Primary Host offline: disconnecting");
                        let d = self.node.ndeath(bdseq);
                        let _ = client
                            .publish(d.topic, QoS::AtLeastOnce, false, d.payload)
                            .await;
                        let _ = client.disconnect().await;
                        return Err(End::Lost { was_online: false });
                    }
                }
                None => {}
            }
        } else if topic == conn.ncmd {
            if conn.online {
                let o = self.node.command(None, payload);
                if o.rebirth {
                    tracing::info!("mqtt: rebirth requested");
                    if !self.birth(client, bdseq).await {
                        return Err(End::Lost {
                            was_online: conn.online,
                        });
                    }
                }
            }
        } else if let Some(dev) = topic.strip_prefix(&conn.dcmd_prefix) {
            if conn.online {
                let _ = self.node.command(Some(dev), payload);
            }
        }
        Ok(())
    }

    /// Births, then everything held while offline; Err ends the session.
    async fn go_online(
        &mut self,
        client: &AsyncClient,
        bdseq: u64,
        conn: &mut Conn,
    ) -> Result<(), End> {
        if !self.birth(client, bdseq).await {
            return Err(End::Lost { was_online: false });
        }
        conn.online = true;
        self.status
            .online
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Then everything held while offline, as historical data.
        let hist = self.node.drain_history();
        if !hist.is_empty() {
            tracing::info!("mqtt: publishing {} historical messages", hist.len());
        }
        for m in hist {
            if !publish(client, m).await {
                return Err(End::Lost { was_online: true });
            }
        }
        Ok(())
    }

    /// Parses a Primary Host STATE payload (spB 3.0 JSON `{"online":
    /// bool, "timestamp": ms}`); stale (older) states are ignored.
    fn host_state(&mut self, payload: &[u8]) -> Option<bool> {
        #[derive(serde::Deserialize)]
        struct State {
            online: bool,
            timestamp: u64,
        }
        match serde_json::from_slice::<State>(payload) {
            Ok(s) if s.timestamp >= self.state_ts => {
                self.state_ts = s.timestamp;
                Some(s.online)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("mqtt: Primary Host STATE payload ignored: {e}");
                None
            }
        }
    }

    async fn birth(&mut self, client: &AsyncClient, bdseq: u64) -> bool {
        for m in self.node.births(bdseq) {
            if !publish(client, m).await {
                return false;
            }
        }
        self.status
            .births
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Publishes the changes already waiting in the feed, if any.
    async fn drain_changes(&mut self, client: &AsyncClient) {
        match self.changes.try_recv() {
            Ok(c) => self.on_change(Ok(c), Some(client)).await,
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                self.on_change(Err(broadcast::error::RecvError::Lagged(n)), Some(client))
                    .await
            }
            Err(_) => {}
        }
    }

    /// A change from the database: reported at once when online (with
    /// everything else already queued), held otherwise.
    async fn on_change(
        &mut self,
        c: Result<Change, broadcast::error::RecvError>,
        client: Option<&AsyncClient>,
    ) {
        let mut batch = Vec::new();
        let mut next = Some(c);
        while let Some(c) = next.take() {
            match c {
                Ok(ch) => {
                    if self.node.exceeds(ch.id, &ch.state) {
                        batch.push(self.node.held_of(ch.id, &ch.state));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // The intermediate values are gone; the current ones
                    // are re-read so nothing stays wrong.
                    tracing::warn!("mqtt: {n} point changes missed (lagged): resynchronising");
                    for id in self.db.served_ids() {
                        if let Some(st) = self.db.read(id) {
                            if self.node.exceeds(id, &st) {
                                batch.push(self.node.held_of(id, &st));
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            // Take everything already waiting: one message per burst.
            match self.changes.try_recv() {
                Ok(c) => next = Some(Ok(c)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    next = Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => {}
            }
        }
        if batch.is_empty() {
            return;
        }
        match client {
            Some(client) => {
                for m in self.node.data(&batch, false) {
                    if !publish(client, m).await {
                        // The session notices the loss from the poller;
                        // the batch is held for the next birth.
                        for h in batch {
                            self.node.hold(h);
                        }
                        return;
                    }
                }
                let now = Instant::now();
                while self
                    .recent
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > RESEND_WINDOW)
                {
                    self.recent.pop_front();
                }
                self.recent.push_back((now, batch));
            }
            None => {
                for h in batch {
                    self.node.hold(h);
                }
            }
        }
    }
}

/// Waits for the next route block change (forever without a template).
async fn blocks_changed(
    rx: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn publish(client: &AsyncClient, m: Out) -> bool {
    client
        .publish(m.topic, QoS::AtMostOnce, false, m.payload)
        .await
        .is_ok()
}
