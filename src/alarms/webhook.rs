//! Outbound webhooks: each notification class may name a URL that receives every notified transition and every acknowledgement of its points as an HTTP POST of JSON, with retries, a bounded queue and a rate limit, never blocking the alarms.
//!
//! One dispatcher task takes events off the runtime's broadcast and puts
//! each on the queue of its class's webhook with `try_send`; one worker per
//! webhook posts them in order. What cannot be queued (the queue is full
//! while the receiver is down or slow, or the dispatcher itself fell
//! behind the broadcast) is counted in `dropped` and logged, never waited
//! for: the durable record of every transition is the SQLite history
//! (persist/alarms.rs), a webhook is a notification of it. A POST that
//! fails (no connection, timeout, non-2xx) is retried `retries` times with
//! doubling delays from `retry_delay` (at most 60 s apart), then counted in
//! `failed`. Posts go out at most `max_rate` per second per webhook, so an
//! alarm storm (100 routes failing at once) reaches the receiver at a
//! bounded rate. docs/alarms.md, "Webhooks".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AlarmEvent, Alarms};

/// One notification class's webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// `http://` or `https://` URL the JSON is POSTed to.
    pub url: String,
    /// Events waiting for this webhook at most (then dropped, counted).
    pub queue: usize,
    /// Retries of a failed POST (so `retries + 1` attempts).
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub retry_delay: Duration,
    /// Time limit of one POST (connect to response).
    pub timeout: Duration,
    /// POSTs per second at most.
    pub max_rate: f64,
}

impl Webhook {
    pub const DEFAULT_QUEUE: usize = 1000;
    pub const DEFAULT_RETRIES: u32 = 5;
    pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_RATE: f64 = 10.0;

    /// A webhook with the default queue, retries, timeout and rate.
    pub fn new(url: impl Into<String>) -> Webhook {
        Webhook {
            url: url.into(),
            queue: Self::DEFAULT_QUEUE,
            retries: Self::DEFAULT_RETRIES,
            retry_delay: Self::DEFAULT_RETRY_DELAY,
            timeout: Self::DEFAULT_TIMEOUT,
            max_rate: Self::DEFAULT_MAX_RATE,
        }
    }

    /// What is wrong with it, for config validation (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
            _ => v.push((
                "webhook",
                "expected an http:// or https:// URL such as \"http://10.0.0.5:8080/alarms\""
                    .to_string(),
            )),
        }
        if !(1..=1_000_000).contains(&self.queue) {
            v.push(("webhook_queue", "expected 1..=1000000 events".into()));
        }
        if self.retries > 100 {
            v.push(("webhook_retries", "expected 0..=100".into()));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            v.push((
                "webhook_timeout",
                "expected a duration of 1ms..=5min".into(),
            ));
        }
        if !(self.max_rate > 0.0 && self.max_rate <= 10_000.0) {
            v.push((
                "webhook_rate",
                "expected 0 < posts per second <= 10000".into(),
            ));
        }
        v
    }
}

/// Counters of one set of webhooks.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events delivered (2xx).
    pub sent: AtomicU64,
    /// Events given up after every retry.
    pub failed: AtomicU64,
    /// Retries made.
    pub retried: AtomicU64,
    /// Events not queued (queue full, or the dispatcher lagged behind).
    pub dropped: AtomicU64,
}

/// Process-wide sums for `/metrics` (tests read their own [`WebhookStats`]).
pub static TOTALS: WebhookStats = WebhookStats {
    sent: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    retried: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

fn bump(stats: &WebhookStats, f: impl Fn(&WebhookStats) -> &AtomicU64, n: u64) {
    f(stats).fetch_add(n, Relaxed);
    f(&TOTALS).fetch_add(n, Relaxed);
}

/// Logs every power of two (1st, 2nd, 4th, ...) of a repeated problem, so a
/// storm past the bound says so without flooding the log.
fn log_now(n: u64) -> bool {
    n.is_power_of_two()
}

/// Starts the dispatcher and one worker per webhook on `tasks` (the app's
/// tracker, so shutdown waits for them); they stop with `shutdown`.
/// Returns the counters.
pub fn spawn(
    alarms: Alarms,
    hooks: HashMap<u32, Webhook>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Arc<WebhookStats> {
    let stats = Arc::new(WebhookStats::default());
    if hooks.is_empty() {
        return stats;
    }
    let client = match reqwest::Client::builder()
        .user_agent(concat!("castpoint/", env!("CARGO_PKG_VERSION")))
        // A redirect could carry the alarm somewhere the config never named.
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("alarm webhooks disabled: no HTTP client: {e}");
            return stats;
        }
    };
    let mut queues = HashMap::new();
    for (class, hook) in hooks {
        let (tx, rx) = mpsc::channel(hook.queue.max(1));
        queues.insert(class, tx);
        tasks.spawn(worker(
            class,
            hook,
            rx,
            client.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
    }
    // Subscribe now, not in the task: events from here on are queued.
    let mut rx = alarms.subscribe();
    let st = stats.clone();
    tasks.spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => ev,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    bump(&st, |s| &s.dropped, n);
                    tracing::warn!("alarm webhooks: {n} events dropped (dispatcher behind)");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let point = match &ev {
                // A transition Event_Enable masks is not notified anywhere.
                AlarmEvent::Transition(r) if !r.transition.notify => continue,
                AlarmEvent::Transition(r) => &r.point,
                AlarmEvent::Ack { point, .. } => point,
            };
            let Some(tx) = alarms.class_of(point).and_then(|c| queues.get(&c)) else {
                continue;
            };
            if tx.try_send(super::json::event_json(&alarms, &ev)).is_err() {
                bump(&st, |s| &s.dropped, 1);
                let n = st.dropped.load(Relaxed);
                if log_now(n) {
                    tracing::warn!(
                        point = %point,
                        "alarm webhook queue full: event dropped ({n} dropped so far; the alarm history keeps it)"
                    );
                }
            }
        }
    });
    stats
}

async fn worker(
    class: u32,
    hook: Webhook,
    mut rx: mpsc::Receiver<J>,
    client: reqwest::Client,
    stats: Arc<WebhookStats>,
    shutdown: CancellationToken,
) {
    let shown = crate::redact::redact_url(&hook.url);
    let gap = Duration::from_secs_f64(1.0 / hook.max_rate.clamp(1e-3, 1e4));
    let mut next = tokio::time::Instant::now();
    loop {
        let body = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        // The rate limit: one POST per `gap`, whatever the backlog.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + gap;
        let body = body.to_string();
        let mut attempt = 0u32;
        loop {
            let res = client
                .post(&hook.url)
                .timeout(hook.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let err = match res {
                Ok(r) if r.status().is_success() => {
                    bump(&stats, |s| &s.sent, 1);
                    break;
                }
                Ok(r) => format!("HTTP {}", r.status().as_u16()),
                Err(e) => crate::redact::redact_text(&e.to_string()),
            };
            if attempt >= hook.retries {
                bump(&stats, |s| &s.failed, 1);
                tracing::error!(
                    class,
                    url = %shown,
                    "alarm webhook failed after {} attempts ({err}); event not delivered (the alarm history keeps it)",
                    attempt + 1
                );
                break;
            }
            bump(&stats, |s| &s.retried, 1);
            let delay = hook
                .retry_delay
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(60));
            tracing::debug!(class, url = %shown, "alarm webhook attempt {} failed ({err}); retrying in {delay:?}", attempt + 1);
            attempt += 1;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
