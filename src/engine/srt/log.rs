//! libsrt's log lines into tracing (target `libsrt`), rate-limited: at most [`PER_SECOND`] lines a second per level, the rest counted and reported as one "suppressed" line, so a flood of hostile datagrams cannot flood the log.
//!
//! libsrt logs one line per rejected handshake ("ROGUE HS RECEIVED"), so
//! anyone who can send UDP to an SRT listener could otherwise write
//! hundreds of thousands of lines (seen: 153,229 lines from 966k datagrams).

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Lines let through per level and second.
pub const PER_SECOND: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);
/// syslog levels 0-7 as libsrt uses them (LOG_ERR = 3, LOG_WARNING = 4, ...).
const LEVELS: usize = 8;

/// The per-level budget of one window.
#[derive(Debug)]
pub struct Limiter {
    per_window: u32,
    start: Option<Instant>,
    passed: [u32; LEVELS],
    suppressed: [u64; LEVELS],
}

impl Limiter {
    pub const fn new(per_window: u32) -> Self {
        Limiter {
            per_window,
            start: None,
            passed: [0; LEVELS],
            suppressed: [0; LEVELS],
        }
    }

    /// Ends the window if it is over: the (level, count) of lines
    /// suppressed in it, to be reported.
    pub fn roll(&mut self, now: Instant) -> Vec<(usize, u64)> {
        let over = self.start.is_none_or(|s| now.duration_since(s) >= WINDOW);
        if !over {
            return Vec::new();
        }
        self.start = Some(now);
        self.passed = [0; LEVELS];
        let out = (0..LEVELS)
            .filter(|&l| self.suppressed[l] > 0)
            .map(|l| (l, self.suppressed[l]))
            .collect();
        self.suppressed = [0; LEVELS];
        out
    }

    /// Whether a line of `level` may be written now (else it is counted).
    pub fn admit(&mut self, level: usize, now: Instant) -> (bool, Vec<(usize, u64)>) {
        let summaries = self.roll(now);
        let l = level.min(LEVELS - 1);
        if self.passed[l] < self.per_window {
            self.passed[l] += 1;
            (true, summaries)
        } else {
            self.suppressed[l] += 1;
            (false, summaries)
        }
    }

    fn pending(&self) -> bool {
        self.suppressed.iter().any(|&n| n > 0)
    }
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter::new(PER_SECOND));
static FLUSHER: Once = Once::new();

fn level_name(l: usize) -> &'static str {
    match l {
        0..=2 => "critical",
        3 => "error",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

fn write(level: usize, line: &str) {
    match level {
        0..=3 => tracing::error!(target: "libsrt", "{line}"),
        4 => tracing::warn!(target: "libsrt", "{line}"),
        5 | 6 => tracing::info!(target: "libsrt", "{line}"),
        _ => tracing::debug!(target: "libsrt", "{line}"),
    }
}

fn report(summaries: Vec<(usize, u64)>) {
    for (l, n) in summaries {
        tracing::warn!(
            target: "libsrt",
            "suppressed {n} libsrt {} lines in the last second (more than {PER_SECOND} a second)",
            level_name(l)
        );
    }
}

/// One line from libsrt's log handler (any libsrt thread).
pub fn forward(level: i32, line: &str) {
    let level = usize::try_from(level).unwrap_or(LEVELS - 1);
    let (ok, summaries, pending) = {
        let Ok(mut lim) = LIMITER.lock() else { return };
        let (ok, s) = lim.admit(level, Instant::now());
        (ok, s, lim.pending())
    };
    report(summaries);
    if ok {
        write(level, line.trim_end());
    }
    if pending {
        // The summary of the last window of a flood is due even if libsrt
        // falls silent: a thread reports it, started the first time
        // anything is suppressed (most processes never need it).
        FLUSHER.call_once(|| {
            // Lives as long as the process, like libsrt's own threads; it
            // holds nothing that needs an orderly shutdown.
            let _ = crate::tasks::spawn_thread("srt-log", || loop {
                std::thread::sleep(WINDOW);
                let s = match LIMITER.lock() {
                    Ok(mut lim) if lim.pending() => lim.roll(Instant::now()),
                    _ => Vec::new(),
                };
                report(s);
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_lines_per_level_and_second_then_one_summary() {
        let mut l = Limiter::new(3);
        let t0 = Instant::now();
        let mut passed = 0;
        for i in 0..1000 {
            let (ok, s) = l.admit(3, t0 + Duration::from_micros(i));
            assert!(s.is_empty());
            passed += usize::from(ok);
        }
        assert_eq!(passed, 3);
        // Another level has its own budget.
        assert!(l.admit(4, t0).0);
        // The next window reports what the last one suppressed, once.
        let (ok, s) = l.admit(3, t0 + Duration::from_millis(1001));
        assert!(ok);
        assert_eq!(s, vec![(3, 997)]);
        assert!(l.roll(t0 + Duration::from_millis(2002)).is_empty());
    }
}
