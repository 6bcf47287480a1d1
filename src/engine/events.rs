//! Engine events: what happened in the router (input switches, outputs added or failed, routes started and stopped), kept in a bounded recent list and broadcast to subscribers.

use super::*;

/// Something that happened in the router (input switch, output added...).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineEvent {
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    pub route: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl EngineEvent {
    pub fn new(route: &str, kind: EventKind) -> Self {
        EngineEvent {
            at: Utc::now(),
            route: route.to_string(),
            kind,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RouteStarted,
    RouteStopped,
    InputSwitched {
        from: Option<usize>,
        to: Option<usize>,
        reason: String,
    },
    OutputAdded {
        output: String,
    },
    OutputRemoved {
        output: String,
    },
    OutputEnabled {
        output: String,
        enabled: bool,
    },
    OutputMoved {
        output: String,
        to: String,
    },
    /// An SRT caller refused by a listener (wrong passphrase, streamid).
    CallerRejected {
        output: String,
        reason: String,
    },
    /// An output stopped working (a recording on a full disk): the error
    /// is also in the output's stats until it recovers.
    OutputFailed {
        output: String,
        error: String,
    },
    /// A failed output works again.
    OutputRecovered {
        output: String,
    },
    /// A caller refused by a listener *input* (a second publisher while
    /// one is connected, a failed handshake: wrong passphrase, a wrong
    /// key length, a refused streamid).
    InputRejected {
        input: String,
        reason: String,
    },
    Restarted,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Event fan-out plus a bounded history for late readers.
#[derive(Clone)]
pub(crate) struct Events {
    pub(super) tx: broadcast::Sender<EngineEvent>,
    pub(super) recent: Arc<Mutex<std::collections::VecDeque<EngineEvent>>>,
}

const EVENT_HISTORY: usize = 1000;

impl Events {
    pub(super) fn new() -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            recent: Arc::new(Mutex::new(std::collections::VecDeque::new())),
        }
    }

    pub fn emit(&self, e: EngineEvent) {
        {
            let mut r = self.recent.lock();
            if r.len() >= EVENT_HISTORY {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        let _ = self.tx.send(e);
    }
}
