//! bms: a building-management client for castpoint's three protocols. It
//! polls BACnet/IP (Who-Is, ReadPropertyMultiple, SubscribeCOV), Modbus TCP
//! (the register map) and Haystack/REST over HTTP at configurable rates,
//! prints the point table side by side with per-protocol response-time
//! percentiles, and writes commands (e.g. `bms write modbus coil 1 on`).

use anyhow::{anyhow, bail, Context};
use castpoint_sim::bacnet::{
    self, Apdu, AppValue, ObjectId, PROP_PRESENT_VALUE, PROP_STATUS_FLAGS,
};
use castpoint_sim::util::{fmt_opt, markdown_table, percentile};
use clap::{Parser, Subcommand};
use serde_json::{json, Value as J};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_modbus::client::{Reader, Writer};

#[derive(Parser, Debug)]
#[command(about = "BMS client: polls castpoint over BACnet/IP, Modbus TCP, Haystack and REST")]
struct Args {
    /// BACnet/IP server address.
    #[arg(long, global = true)]
    bacnet: Option<SocketAddr>,
    /// Modbus TCP server address.
    #[arg(long, global = true)]
    modbus: Option<SocketAddr>,
    /// HTTP base URL (Haystack under /api/haystack, REST under /api).
    #[arg(long, global = true)]
    http: Option<String>,
    /// Haystack user (SCRAM login); without it requests are anonymous.
    #[arg(long, global = true, env = "HAYSTACK_USER")]
    hs_user: Option<String>,
    #[arg(long, global = true, env = "HAYSTACK_PASSWORD", hide_env_values = true)]
    hs_password: Option<String>,
    /// Modbus unit id.
    #[arg(long, global = true, default_value_t = 1)]
    unit: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Poll every configured protocol and print the point table and timings.
    Poll {
        /// Polls per second per client (0 = back to back, for benchmarks).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Concurrent clients per protocol.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Seconds to run.
        #[arg(short, long, default_value_t = 5.0)]
        duration: f64,
        /// Also SubscribeCOV (BACnet) and watchSub/watchPoll (Haystack).
        #[arg(long)]
        watch: bool,
        /// Only these protocols (bacnet, modbus, haystack, rest); default all configured.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Print JSON instead of Markdown.
        #[arg(long)]
        json: bool,
        /// Skip the point table (timings only).
        #[arg(long)]
        no_table: bool,
    },
    /// Write a command: modbus coil N on|off | modbus holding 4xxxx V |
    /// bacnet BO0 active|inactive|V|null | rest POINT VALUE | haystack POINT VALUE.
    Write {
        protocol: String,
        args: Vec<String>,
        /// Priority (BACnet 1-16, REST/Haystack level).
        #[arg(long)]
        priority: Option<u8>,
    },
}

/// Where a seed point lives on each protocol.
#[derive(Clone, Copy)]
enum Mb {
    /// Input registers, f32 ABCD (the full-precision block).
    F32(u16),
    Coil(u16),
    Holding(u16),
}

struct PointSpec {
    id: &'static str,
    bacnet: ObjectId,
    modbus: Mb,
}

macro_rules! pt {
    ($id:literal, $t:expr, $i:literal, $mb:expr) => {
        PointSpec {
            id: $id,
            bacnet: ObjectId {
                object_type: $t,
                instance: $i,
            },
            modbus: $mb,
        }
    };
}

const AI: u16 = ObjectId::ANALOG_INPUT;
const AV: u16 = ObjectId::ANALOG_VALUE;
const BO: u16 = ObjectId::BINARY_OUTPUT;
const MSV: u16 = ObjectId::MULTI_STATE_VALUE;

/// The seed's protocol map (mappings/*.toml), as a BMS integrator would
/// configure it from the published EDE / register map.
const POINTS: &[PointSpec] = &[
    pt!("active_streams", AI, 0, Mb::F32(30101)),
    pt!("connected_viewers", AI, 1, Mb::F32(30103)),
    pt!("total_bitrate_out", AI, 2, Mb::F32(30105)),
    pt!("cpu_usage", AI, 3, Mb::F32(30107)),
    pt!("memory_usage", AI, 4, Mb::F32(30109)),
    pt!("gpu_usage", AI, 5, Mb::F32(30111)),
    pt!("network_throughput", AI, 6, Mb::F32(30113)),
    pt!("encoding_latency", AI, 7, Mb::F32(30115)),
    pt!("dropped_frames", AI, 8, Mb::F32(30117)),
    pt!("uptime", AI, 9, Mb::F32(30119)),
    pt!("stream_enable", BO, 0, Mb::Coil(1)),
    pt!("recording_enable", BO, 1, Mb::Coil(2)),
    pt!("transcode_enable", BO, 2, Mb::Coil(3)),
    pt!("system_restart", BO, 3, Mb::Coil(4)),
    pt!("input_select", AV, 0, Mb::Holding(40101)),
    pt!("output_profile", AV, 1, Mb::Holding(40102)),
    pt!("server_status", MSV, 0, Mb::Holding(40001)),
    pt!("stream_status", MSV, 1, Mb::Holding(40002)),
    pt!("input_status", MSV, 2, Mb::Holding(40003)),
    pt!("encoder_status", MSV, 3, Mb::Holding(40004)),
    pt!("cdn_status", MSV, 4, Mb::Holding(40005)),
    pt!("gpu_status", MSV, 5, Mb::Holding(40006)),
    pt!("communication_status", MSV, 6, Mb::Holding(40007)),
];

const PROTOCOLS: [&str; 4] = ["bacnet", "modbus", "haystack", "rest"];

#[derive(Default)]
struct Stats {
    times_ms: Vec<f64>,
    errors: u64,
    last_error: Option<String>,
}

/// Shared poll state: last value per (point, protocol) and timings.
#[derive(Default)]
struct Shared {
    values: BTreeMap<(&'static str, &'static str), String>,
    stats: BTreeMap<&'static str, Stats>,
    cov_notifications: u64,
    watch_updates: u64,
}

type State = Arc<Mutex<Shared>>;

fn lock(s: &State) -> std::sync::MutexGuard<'_, Shared> {
    // A poisoned lock only means another poller panicked; the data is still usable.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(s: &State, proto: &'static str, t: Instant, r: &anyhow::Result<()>) {
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut g = lock(s);
    let st = g.stats.entry(proto).or_default();
    match r {
        Ok(()) => st.times_ms.push(ms),
        Err(e) => {
            st.errors += 1;
            st.last_error = Some(format!("{e:#}"));
        }
    }
}

fn set_value(s: &State, point: &'static str, proto: &'static str, v: String) {
    lock(s).values.insert((point, proto), v);
}

// ------------------------------------------------------------------ BACnet

struct BacnetClient {
    sock: UdpSocket,
    server: SocketAddr,
    invoke: u8,
}

impl BacnetClient {
    async fn new(server: SocketAddr) -> anyhow::Result<Self> {
        let bind = if server.ip().is_loopback() {
            "127.0.0.1:0"
        } else {
            "0.0.0.0:0"
        };
        Ok(Self {
            sock: UdpSocket::bind(bind).await?,
            server,
            invoke: 0,
        })
    }

    /// Sends a confirmed request and waits for its answer; COV notifications
    /// arriving meanwhile go to `on_cov`.
    async fn request(
        &mut self,
        build: impl Fn(u8) -> Vec<u8>,
        state: Option<&State>,
    ) -> anyhow::Result<Apdu> {
        self.invoke = self.invoke.wrapping_add(1);
        let invoke = self.invoke;
        self.sock.send_to(&build(invoke), self.server).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .map_err(|_| anyhow!("BACnet timeout (invoke {invoke})"))??;
            let apdu = match bacnet::decode(&buf[..n]) {
                Ok(a) => a,
                Err(e) => bail!("undecodable reply: {e}"),
            };
            match apdu {
                Apdu::Cov {
                    confirmed_invoke,
                    notification,
                } => {
                    if let Some(inv) = confirmed_invoke {
                        self.sock.send_to(&bacnet::simple_ack(inv, 1), from).await?;
                    }
                    if let Some(s) = state {
                        cov_update(s, &notification);
                    }
                }
                Apdu::ComplexAck { invoke: i, .. }
                | Apdu::SimpleAck { invoke: i, .. }
                | Apdu::Error { invoke: i, .. }
                | Apdu::Reject { invoke: i, .. }
                | Apdu::Abort { invoke: i, .. }
                    if i == invoke =>
                {
                    return Ok(apdu)
                }
                _ => {}
            }
        }
    }

    async fn who_is(&mut self) -> anyhow::Result<ObjectId> {
        self.sock
            .send_to(&bacnet::who_is(false, None), self.server)
            .await?;
        let mut buf = vec![0u8; 1500];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .map_err(|_| anyhow!("no I-Am within 2 s"))??;
            if let Ok(Apdu::IAm { device, .. }) = bacnet::decode(&buf[..n]) {
                return Ok(device);
            }
        }
    }
}

fn cov_update(s: &State, n: &bacnet::CovNotification) {
    let mut g = lock(s);
    g.cov_notifications += 1;
    if let Some(p) = POINTS.iter().find(|p| p.bacnet == n.object) {
        if let Some((_, v)) = n
            .values
            .iter()
            .find(|(prop, _)| *prop == PROP_PRESENT_VALUE)
        {
            g.values.insert(
                (p.id, "bacnet cov"),
                v.iter().map(fmt_app).collect::<Vec<_>>().join(","),
            );
        }
    }
}

fn fmt_app(v: &AppValue) -> String {
    match v {
        AppValue::Real(x) => format!("{:.3}", x)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
        AppValue::Enumerated(x) => format!("{x}"),
        other => other.to_string(),
    }
}

fn expect_ack(a: Apdu) -> anyhow::Result<Vec<u8>> {
    match a {
        Apdu::ComplexAck { body, .. } => Ok(body),
        Apdu::SimpleAck { .. } => Ok(Vec::new()),
        Apdu::Error { class, code, .. } => bail!("BACnet error class {class} code {code}"),
        Apdu::Reject { reason, .. } => bail!("BACnet reject reason {reason}"),
        Apdu::Abort { reason, .. } => bail!("BACnet abort reason {reason}"),
        other => bail!("unexpected {other:?}"),
    }
}

async fn bacnet_poller(
    server: SocketAddr,
    state: State,
    period: Option<Duration>,
    end: Instant,
    watch: bool,
    first: bool,
) -> anyhow::Result<()> {
    let mut c = BacnetClient::new(server).await?;
    let t = Instant::now();
    let r = c.who_is().await;
    record(
        &state,
        "bacnet who-is",
        t,
        &r.as_ref().map(|_| ()).map_err(|e| anyhow!("{e:#}")),
    );
    if watch {
        for (i, p) in POINTS.iter().enumerate() {
            let t = Instant::now();
            let r = c
                .request(
                    |inv| bacnet::subscribe_cov(inv, 1000 + i as u32, p.bacnet, false, Some(300)),
                    Some(&state),
                )
                .await
                .and_then(expect_ack)
                .map(|_| ());
            record(&state, "bacnet subscribe-cov", t, &r);
        }
    }
    let reqs: Vec<(ObjectId, Vec<u32>)> = POINTS
        .iter()
        .map(|p| (p.bacnet, vec![PROP_PRESENT_VALUE]))
        .collect();
    while Instant::now() < end {
        let t = Instant::now();
        let r = async {
            let body = expect_ack(
                c.request(
                    |inv| bacnet::read_property_multiple(inv, &reqs),
                    Some(&state),
                )
                .await?,
            )?;
            let objs = bacnet::parse_rpm_ack(&body)?;
            if first {
                for (obj, props) in objs {
                    let Some(p) = POINTS.iter().find(|p| p.bacnet == obj) else {
                        continue;
                    };
                    let pv = props.iter().find(|r| r.property == PROP_PRESENT_VALUE);
                    let mut v = match pv.map(|r| &r.value) {
                        Some(Ok(vals)) => vals.iter().map(fmt_app).collect::<Vec<_>>().join(","),
                        Some(Err((cl, co))) => format!("error {cl}/{co}"),
                        None => "-".into(),
                    };
                    // Status flags: in-alarm, fault, overridden, out-of-service.
                    if let Some(Ok(vals)) = props
                        .iter()
                        .find(|r| r.property == PROP_STATUS_FLAGS)
                        .map(|r| &r.value)
                    {
                        if let Some(AppValue::BitString(bits)) = vals.first() {
                            let names = ["alarm", "fault", "overridden", "out-of-service"];
                            let set: Vec<&str> = bits
                                .iter()
                                .zip(names)
                                .filter(|(b, _)| **b)
                                .map(|(_, n)| n)
                                .collect();
                            if !set.is_empty() {
                                v = format!("{v} ({})", set.join(","));
                            }
                        }
                    }
                    set_value(&state, p.id, "bacnet", v);
                }
            }
            anyhow::Ok(())
        }
        .await;
        record(&state, "bacnet", t, &r);
        pace(period, t, end).await;
    }
    if watch {
        // Drain notifications for a moment so they are counted.
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(50), c.sock.recv_from(&mut buf)).await
        {
            if let Ok(Apdu::Cov {
                confirmed_invoke,
                notification,
            }) = bacnet::decode(&buf[..n])
            {
                if let Some(inv) = confirmed_invoke {
                    c.sock.send_to(&bacnet::simple_ack(inv, 1), from).await?;
                }
                cov_update(&state, &notification);
            }
        }
    }
    Ok(())
}

async fn pace(period: Option<Duration>, started: Instant, end: Instant) {
    if let Some(p) = period {
        let next = (started + p).min(end);
        tokio::time::sleep_until(next.into()).await;
    }
}

// ------------------------------------------------------------------ Modbus

async fn modbus_poller(
    server: SocketAddr,
    unit: u8,
    state: State,
    period: Option<Duration>,
    end: Instant,
    first: bool,
) -> anyhow::Result<()> {
    let mut ctx =
        tokio_modbus::client::tcp::connect_slave(server, tokio_modbus::Slave(unit)).await?;
    while Instant::now() < end {
        let cycle = Instant::now();
        macro_rules! timed {
            ($e:expr) => {{
                let t = Instant::now();
                let r = $e.await;
                let res: anyhow::Result<_> = match r {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(ex)) => Err(anyhow!("Modbus exception {ex:?}")),
                    Err(e) => Err(anyhow!("Modbus: {e}")),
                };
                record(
                    &state,
                    "modbus",
                    t,
                    &res.as_ref().map(|_| ()).map_err(|e| anyhow!("{e:#}")),
                );
                res
            }};
        }
        let scaled = timed!(ctx.read_input_registers(0, 10));
        let f32s = timed!(ctx.read_input_registers(100, 20));
        let statuses = timed!(ctx.read_holding_registers(0, 7));
        let sps = timed!(ctx.read_holding_registers(100, 2));
        let coils = timed!(ctx.read_coils(0, 4));
        if first {
            for p in POINTS {
                let v = match p.modbus {
                    Mb::F32(a) => f32s.as_ref().ok().and_then(|r| {
                        let i = usize::from(a - 30101);
                        let hi = *r.get(i)?;
                        let lo = *r.get(i + 1)?;
                        let x = f32::from_bits((u32::from(hi) << 16) | u32::from(lo));
                        Some(fmt_app(&AppValue::Real(x)))
                    }),
                    Mb::Coil(n) => coils
                        .as_ref()
                        .ok()
                        .and_then(|c| c.get(usize::from(n - 1)).map(|b| b.to_string())),
                    Mb::Holding(a) if a >= 40101 => sps
                        .as_ref()
                        .ok()
                        .and_then(|r| r.get(usize::from(a - 40101)).map(|v| v.to_string())),
                    Mb::Holding(a) => statuses
                        .as_ref()
                        .ok()
                        .and_then(|r| r.get(usize::from(a - 40001)).map(|v| v.to_string())),
                };
                set_value(&state, p.id, "modbus", v.unwrap_or_else(|| "-".into()));
            }
            if let Ok(r) = &scaled {
                lock(&state)
                    .values
                    .insert(("30001-30010", "modbus"), format!("{r:?}"));
            }
        }
        pace(period, cycle, end).await;
    }
    Ok(())
}

// ------------------------------------------------------------------ HTTP

/// Displays a Haystack JSON value (Haystack 4 objects or Haystack 3 strings).
fn hs_display(v: &J) -> String {
    match v {
        J::Object(o) => match o.get("_kind").and_then(J::as_str) {
            Some("number") => {
                let val = o.get("val").map(|x| x.to_string()).unwrap_or_default();
                val.trim_matches('"').to_string()
            }
            Some("ref") => o.get("val").and_then(J::as_str).unwrap_or("").to_string(),
            _ => v.to_string(),
        },
        J::String(s) => match s.split_once(':') {
            Some(("n", rest)) => rest.split(' ').next().unwrap_or("").to_string(),
            Some(("r" | "s", rest)) => rest.split(' ').next().unwrap_or("").to_string(),
            _ => s.clone(),
        },
        J::Bool(b) => b.to_string(),
        J::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Which seed point a Haystack row is: by navName/id suffix, else by dis.
fn hs_point(row: &J) -> Option<&'static str> {
    let idv = row.get("id").map(hs_display).unwrap_or_default();
    let nav = row.get("navName").map(hs_display).unwrap_or_default();
    let dis = row
        .get("dis")
        .map(hs_display)
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace(' ', "_");
    POINTS.iter().map(|p| p.id).find(|id| {
        nav == *id
            || idv == *id
            || idv.ends_with(&format!(".{id}"))
            || idv.ends_with(&format!(":{id}"))
            || idv.ends_with(&format!("/{id}"))
            || dis == *id
    })
}

fn hs_rows(grid: &J) -> anyhow::Result<&Vec<J>> {
    if let Some(err) = grid.pointer("/meta/err") {
        bail!(
            "Haystack error grid: {}",
            grid.pointer("/meta/dis")
                .map(hs_display)
                .unwrap_or_else(|| err.to_string())
        );
    }
    grid.get("rows")
        .and_then(J::as_array)
        .ok_or_else(|| anyhow!("Haystack reply has no rows"))
}

fn hs_request_grid(meta: J, rows: Vec<J>) -> J {
    let mut m = meta;
    m["ver"] = json!("3.0");
    let cols: Vec<J> = rows
        .first()
        .and_then(J::as_object)
        .map(|o| o.keys().map(|k| json!({"name": k})).collect())
        .unwrap_or_else(|| vec![json!({"name": "empty"})]);
    json!({"_kind": "grid", "meta": m, "cols": cols, "rows": rows})
}

async fn http_json(req: reqwest::RequestBuilder) -> anyhow::Result<J> {
    let resp = req.header("Accept", "application/json").send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    serde_json::from_slice(&body).context("JSON body")
}

/// An HTTP client for the Haystack ops, logged in when credentials are given.
async fn haystack_client(
    hs: &str,
    creds: &Option<(String, String)>,
) -> anyhow::Result<reqwest::Client> {
    let Some((user, pass)) = creds else {
        return Ok(reqwest::Client::new());
    };
    let token = castpoint_sim::haystack_auth::login(
        &reqwest::Client::new(),
        &format!("{hs}/about"),
        user,
        pass,
    )
    .await
    .context("Haystack login")?;
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("BEARER authToken={token}")
            .parse()
            .context("token header")?,
    );
    Ok(reqwest::Client::builder().default_headers(h).build()?)
}

async fn haystack_poller(
    base: String,
    creds: Option<(String, String)>,
    state: State,
    period: Option<Duration>,
    end: Instant,
    watch: bool,
    first: bool,
) -> anyhow::Result<()> {
    let hs = format!("{}/api/haystack", base.trim_end_matches('/'));
    let t = Instant::now();
    let client = haystack_client(&hs, &creds).await;
    if creds.is_some() {
        record(
            &state,
            "haystack login",
            t,
            &client.as_ref().map(|_| ()).map_err(|e| anyhow!("{e:#}")),
        );
    }
    let client = client?;
    let mut watch_id: Option<String> = None;
    if watch {
        let t = Instant::now();
        let r = async {
            let grid = http_json(client.get(format!("{hs}/read?filter=point"))).await?;
            let ids: Vec<J> = hs_rows(&grid)?
                .iter()
                .filter_map(|r| r.get("id").cloned())
                .map(|id| json!({"id": id}))
                .collect();
            let req = hs_request_grid(
                json!({"watchDis": "bms", "lease": {"_kind": "number", "val": 60, "unit": "s"}}),
                ids,
            );
            let reply = http_json(
                client
                    .post(format!("{hs}/watchSub"))
                    .header("Content-Type", "application/json")
                    .body(req.to_string()),
            )
            .await?;
            hs_rows(&reply)?;
            watch_id = reply.pointer("/meta/watchId").map(hs_display);
            if watch_id.is_none() {
                bail!("watchSub reply has no watchId");
            }
            anyhow::Ok(())
        }
        .await;
        record(&state, "haystack watchSub", t, &r);
    }
    while Instant::now() < end {
        let cycle = Instant::now();
        let t = Instant::now();
        let r = async {
            let grid = http_json(client.get(format!("{hs}/read?filter=point"))).await?;
            let rows = hs_rows(&grid)?;
            if rows.is_empty() {
                bail!("read returned no points");
            }
            if first {
                for row in rows {
                    if let Some(id) = hs_point(row) {
                        set_value(
                            &state,
                            id,
                            "haystack",
                            row.get("curVal")
                                .map(hs_display)
                                .unwrap_or_else(|| "-".into()),
                        );
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        record(&state, "haystack", t, &r);
        if let Some(w) = &watch_id {
            let t = Instant::now();
            let r = async {
                let req = hs_request_grid(json!({"watchId": w}), vec![]);
                let reply = http_json(
                    client
                        .post(format!("{hs}/watchPoll"))
                        .header("Content-Type", "application/json")
                        .body(req.to_string()),
                )
                .await?;
                let n = hs_rows(&reply)?.len() as u64;
                lock(&state).watch_updates += n;
                anyhow::Ok(())
            }
            .await;
            record(&state, "haystack watchPoll", t, &r);
        }
        pace(period, cycle, end).await;
    }
    if let Some(w) = watch_id {
        let req = hs_request_grid(json!({"watchId": w, "close": {"_kind": "marker"}}), vec![]);
        let _ = client
            .post(format!("{hs}/watchUnsub"))
            .header("Content-Type", "application/json")
            .body(req.to_string())
            .send()
            .await;
    }
    Ok(())
}

async fn rest_poller(
    base: String,
    state: State,
    period: Option<Duration>,
    end: Instant,
    first: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/api/points", base.trim_end_matches('/'));
    while Instant::now() < end {
        let t = Instant::now();
        let r = async {
            let v = http_json(client.get(&url)).await?;
            let arr = v
                .as_array()
                .ok_or_else(|| anyhow!("/api/points is not an array"))?;
            if first {
                for p in arr {
                    let Some(id) = p.get("id").and_then(J::as_str) else {
                        continue;
                    };
                    if let Some(spec) = POINTS.iter().find(|s| s.id == id) {
                        let val = p.get("value").map(hs_display).unwrap_or_default();
                        let status = p.get("status").and_then(J::as_str).unwrap_or("");
                        let shown = if status == "ok" || status.is_empty() {
                            val
                        } else {
                            format!("{val} ({status})")
                        };
                        set_value(&state, spec.id, "rest", shown);
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        record(&state, "rest", t, &r);
        pace(period, t, end).await;
    }
    Ok(())
}

// ------------------------------------------------------------------ output

fn print_report(state: &Shared, protos: &[&str], seconds: f64, json_out: bool, table: bool) {
    let mut timing_rows = Vec::new();
    let mut timing_json = Vec::new();
    for (name, st) in &state.stats {
        let mut t = st.times_ms.clone();
        t.sort_by(f64::total_cmp);
        let rate = t.len() as f64 / seconds;
        timing_json.push(json!({
            "protocol": name, "requests": t.len(), "errors": st.errors, "req_per_s": rate,
            "p50_ms": percentile(&t, 0.5), "p90_ms": percentile(&t, 0.9), "p99_ms": percentile(&t, 0.99),
            "max_ms": percentile(&t, 1.0), "last_error": st.last_error,
        }));
        timing_rows.push(vec![
            name.to_string(),
            t.len().to_string(),
            st.errors.to_string(),
            format!("{rate:.0}"),
            fmt_opt(percentile(&t, 0.5), 2),
            fmt_opt(percentile(&t, 0.9), 2),
            fmt_opt(percentile(&t, 0.99), 2),
            fmt_opt(percentile(&t, 1.0), 2),
            st.last_error.clone().unwrap_or_default(),
        ]);
    }
    let mut cols: Vec<&str> = protos.to_vec();
    if state.values.keys().any(|(_, p)| *p == "bacnet cov") {
        cols.push("bacnet cov");
    }
    let point_rows: Vec<Vec<String>> = POINTS
        .iter()
        .map(|p| {
            let mut r = vec![p.id.to_string(), p.bacnet.short(), modbus_addr(p.modbus)];
            for c in &cols {
                r.push(
                    state
                        .values
                        .get(&(p.id, *c))
                        .cloned()
                        .unwrap_or_else(|| "-".into()),
                );
            }
            r
        })
        .collect();
    if json_out {
        let points: Vec<J> = point_rows
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("point".into(), json!(r[0]));
                o.insert("bacnet_object".into(), json!(r[1]));
                o.insert("modbus_address".into(), json!(r[2]));
                for (i, c) in cols.iter().enumerate() {
                    o.insert((*c).to_string(), json!(r[3 + i]));
                }
                J::Object(o)
            })
            .collect();
        let out = json!({
            "seconds": seconds, "timings": timing_json,
            "points": if table { J::Array(points) } else { J::Null },
            "cov_notifications": state.cov_notifications, "watch_updates": state.watch_updates,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    if table {
        let mut headers = vec!["point", "BACnet", "Modbus"];
        headers.extend(cols.iter());
        println!("{}", markdown_table(&headers, &point_rows));
    }
    println!(
        "{}",
        markdown_table(
            &[
                "protocol",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "last error"
            ],
            &timing_rows
        )
    );
    if state.cov_notifications > 0 || state.watch_updates > 0 {
        println!(
            "COV notifications: {}, watchPoll updates: {}",
            state.cov_notifications, state.watch_updates
        );
    }
}

fn modbus_addr(m: Mb) -> String {
    match m {
        Mb::F32(a) => format!("{a} f32"),
        Mb::Coil(n) => format!("{n:05}"),
        Mb::Holding(a) => a.to_string(),
    }
}

// ------------------------------------------------------------------ writes

fn parse_onoff(s: &str) -> anyhow::Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "active" => Ok(true),
        "off" | "0" | "false" | "inactive" => Ok(false),
        _ => bail!("expected on/off, got {s:?}"),
    }
}

async fn write(
    a: &Args,
    protocol: &str,
    args: &[String],
    priority: Option<u8>,
) -> anyhow::Result<()> {
    match (protocol, args) {
        ("modbus", [table, addr, value]) => {
            let server = a.modbus.context("--modbus ADDR needed")?;
            let mut ctx = tokio_modbus::client::tcp::connect_slave(server, tokio_modbus::Slave(a.unit)).await?;
            let n: u16 = addr.parse().context("address")?;
            let r = match table.as_str() {
                "coil" => {
                    let off = if n >= 1 { n - 1 } else { bail!("coils are numbered from 1 (00001)") };
                    ctx.write_single_coil(off % 10000, parse_onoff(value)?).await
                }
                "holding" => {
                    if !(40001..=49999).contains(&n) {
                        bail!("holding registers are 40001..49999");
                    }
                    ctx.write_single_register(n - 40001, value.parse().context("u16 value")?).await
                }
                t => bail!("unknown Modbus table {t:?} (coil, holding)"),
            };
            match r {
                Ok(Ok(())) => println!("ok"),
                Ok(Err(ex)) => bail!("Modbus exception {ex:?}"),
                Err(e) => bail!("Modbus: {e}"),
            }
        }
        ("bacnet", [obj, value]) => {
            let server = a.bacnet.context("--bacnet ADDR needed")?;
            let o = ObjectId::parse_short(obj).with_context(|| format!("bad object {obj:?} (AI0, BO1, AV0, MSV2)"))?;
            let v = match (o.object_type, value.to_ascii_lowercase().as_str()) {
                (_, "null") => AppValue::Null,
                (BO | ObjectId::BINARY_VALUE, s) => AppValue::Enumerated(u32::from(parse_onoff(s)?)),
                (MSV, s) => AppValue::Unsigned(s.parse().context("state ordinal")?),
                (_, s) => AppValue::Real(s.parse().context("number")?),
            };
            let mut c = BacnetClient::new(server).await?;
            let reply = c
                .request(|inv| bacnet::write_property(inv, o, PROP_PRESENT_VALUE, &v, Some(priority.unwrap_or(8))), None)
                .await?;
            expect_ack(reply)?;
            println!("ok");
        }
        ("rest", [point, value]) => {
            let base = a.http.as_deref().context("--http URL needed")?;
            let v: J = serde_json::from_str(value).unwrap_or_else(|_| J::String(value.clone()));
            let mut body = json!({"value": v});
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            let client = reqwest::Client::new();
            let url = format!("{}/api/points/{point}", base.trim_end_matches('/'));
            let r = http_json(client.post(url).header("Content-Type", "application/json").body(body.to_string())).await?;
            println!("{}", r.get("value").map(hs_display).unwrap_or_else(|| r.to_string()));
        }
        ("haystack", [point, value]) => {
            let base = a.http.as_deref().context("--http URL needed")?;
            let hs = format!("{}/api/haystack", base.trim_end_matches('/'));
            let client = haystack_client(&hs, &a.hs_user.clone().zip(a.hs_password.clone())).await?;
            let grid = http_json(client.get(format!("{hs}/read?filter=point"))).await?;
            let row = hs_rows(&grid)?.iter().find(|r| hs_point(r) == Some(point.as_str())).with_context(|| format!("no Haystack point for {point}"))?;
            let id = row.get("id").cloned().context("row without id")?;
            let val = match value.to_ascii_lowercase().as_str() {
                "true" | "on" => json!(true),
                "false" | "off" => json!(false),
                "null" => J::Null,
                s => json!({"_kind": "number", "val": s.parse::<f64>().context("number")?}),
            };
            let req = hs_request_grid(json!({}), vec![json!({"id": id, "level": {"_kind": "number", "val": priority.unwrap_or(8)}, "val": val, "who": "bms"})]);
            let reply = http_json(client.post(format!("{hs}/pointWrite")).header("Content-Type", "application/json").body(req.to_string())).await?;
            hs_rows(&reply)?;
            println!("ok");
        }
        _ => bail!("usage: bms write modbus coil N on|off | modbus holding 4xxxx V | bacnet OBJ VALUE | rest POINT VALUE | haystack POINT VALUE"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors print as one line (with their causes), never a backtrace.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bms: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    match &a.cmd {
        Cmd::Write {
            protocol,
            args,
            priority,
        } => write(&a, protocol, args, *priority).await,
        Cmd::Poll {
            rate,
            clients,
            duration,
            watch,
            only,
            json,
            no_table,
        } => {
            if *clients == 0 || *duration <= 0.0 || *rate < 0.0 {
                bail!("--clients > 0, --duration > 0, --rate >= 0");
            }
            for o in only {
                if !PROTOCOLS.contains(&o.as_str()) {
                    bail!("unknown protocol {o:?} (bacnet, modbus, haystack, rest)");
                }
            }
            let wanted = |p: &str| only.is_empty() || only.iter().any(|o| o == p);
            let period = (*rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
            let state: State = Arc::default();
            let creds = a.hs_user.clone().zip(a.hs_password.clone());
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(*duration);
            let mut set = tokio::task::JoinSet::new();
            let mut protos = Vec::new();
            for i in 0..*clients {
                let first = i == 0;
                if let (Some(b), true) = (a.bacnet, wanted("bacnet")) {
                    set.spawn(bacnet_poller(
                        b,
                        state.clone(),
                        period,
                        end,
                        *watch && first,
                        first,
                    ));
                    if first {
                        protos.push("bacnet");
                    }
                }
                if let (Some(m), true) = (a.modbus, wanted("modbus")) {
                    set.spawn(modbus_poller(m, a.unit, state.clone(), period, end, first));
                    if first {
                        protos.push("modbus");
                    }
                }
                if let (Some(h), true) = (&a.http, wanted("haystack")) {
                    set.spawn(haystack_poller(
                        h.clone(),
                        creds.clone(),
                        state.clone(),
                        period,
                        end,
                        *watch && first,
                        first,
                    ));
                    if first {
                        protos.push("haystack");
                    }
                }
                if let (Some(h), true) = (&a.http, wanted("rest")) {
                    set.spawn(rest_poller(h.clone(), state.clone(), period, end, first));
                    if first {
                        protos.push("rest");
                    }
                }
            }
            if protos.is_empty() {
                bail!("nothing to poll: give --bacnet, --modbus and/or --http");
            }
            let mut failures = Vec::new();
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(format!("{e:#}")),
                    Err(e) => failures.push(format!("poller task: {e}")),
                }
            }
            let secs = start.elapsed().as_secs_f64();
            print_report(&lock(&state), &protos, secs, *json, !*no_table);
            for f in &failures {
                eprintln!("bms: poller failed: {f}");
            }
            if !failures.is_empty() {
                bail!("{} poller(s) failed", failures.len());
            }
            Ok(())
        }
    }
}
