//! Joining an MPEG-TS mid-stream where a decoder can start: PAT and PMT first, then the video from a keyframe on. Used by HTTP-TS viewers and by every ffmpeg child (a `-c copy` RTMP push that starts mid-GOP cannot learn the picture size and fails its connect).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::ts::{keyframe_start, PsiCache, TS};

/// How long a joiner waits for a keyframe before it is started anyway (a
/// stream without IDRs, e.g. intra refresh, must still play).
pub const JOIN_WAIT: Duration = Duration::from_secs(10);
/// How long a joiner waits for PAT/PMT when no video PID is known.
pub const PSI_WAIT: Duration = Duration::from_secs(1);

/// What one chunk offers a consumer that is waiting to start.
pub struct JoinPoint {
    /// PAT + PMT followed by the chunk from its keyframe on.
    at_keyframe: Option<Bytes>,
    /// PAT + PMT followed by the whole chunk (after the waits run out).
    anyway: Bytes,
}

impl JoinPoint {
    /// What a consumer that has waited `waited` gets now, if anything.
    pub fn pick(&self, waited: Duration, video: Option<(u16, u8)>) -> Option<Bytes> {
        if let Some(b) = &self.at_keyframe {
            return Some(b.clone());
        }
        let give_up = if video.is_some() { JOIN_WAIT } else { PSI_WAIT };
        (waited >= give_up).then(|| self.anyway.clone())
    }
}

/// Follows a stream's PSI and finds, per chunk, where a joiner may start.
#[derive(Default, Clone)]
pub struct JoinTracker {
    cache: PsiCache,
}

impl JoinTracker {
    /// The video PID and stream type, once the PMT has been seen.
    pub fn video(&self) -> Option<(u16, u8)> {
        self.cache.psi.video
    }

    /// Observes `chunk`; when `want` (someone is waiting) also returns what
    /// the chunk offers a joiner.
    pub fn next(&mut self, chunk: &Bytes, want: bool) -> Option<JoinPoint> {
        let key = self
            .video()
            .and_then(|(pid, st)| keyframe_start(chunk, pid, st));
        // The PSI before the keyframe is what a joiner starting there has
        // seen; what follows it belongs to the next join.
        let split = key.unwrap_or(chunk.len());
        self.cache.observe(&chunk[..split]);
        let join = want.then(|| self.join_point(chunk, key));
        self.cache.observe(&chunk[split..]);
        join
    }

    fn join_point(&self, chunk: &Bytes, key: Option<usize>) -> JoinPoint {
        let header = self.cache.header();
        let with_header = |from: usize| {
            let mut b = BytesMut::with_capacity(2 * TS + chunk.len());
            if let Some(h) = &header {
                b.extend_from_slice(h);
            }
            b.extend_from_slice(&chunk[from..]);
            b.freeze()
        };
        JoinPoint {
            at_keyframe: key.filter(|_| header.is_some()).map(with_header),
            anyway: with_header(0),
        }
    }
}

/// One consumer's join: chunks are held back until a decodable start,
/// then passed through until [`Joiner::rejoin`].
#[derive(Default)]
pub struct Joiner {
    tracker: JoinTracker,
    /// Waiting since then; `None` once started.
    waiting: Option<Instant>,
}

impl Joiner {
    /// A joiner that waits for its first start.
    pub fn new() -> Self {
        Joiner {
            tracker: JoinTracker::default(),
            waiting: Some(Instant::now()),
        }
    }

    /// Start over: the consumer was restarted and must join again. What
    /// was learned of the stream's PSI is kept.
    pub fn rejoin(&mut self) {
        self.waiting = Some(Instant::now());
    }

    /// Observes a chunk the consumer will not get (e.g. while it is down),
    /// so that the PSI stays current.
    pub fn skip(&mut self, chunk: &Bytes) {
        self.tracker.next(chunk, false);
    }

    /// What of `chunk` the consumer gets, if anything.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        let Some(since) = self.waiting else {
            self.tracker.next(&chunk, false);
            return Some(chunk);
        };
        let join = self.tracker.next(&chunk, true)?;
        let out = join.pick(since.elapsed(), self.tracker.video())?;
        self.waiting = None;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpegts::ts::tests::pes_pkt;

    const V: u16 = 0x100;

    /// A single-packet PAT (program 1 -> PMT PID 0x1000) or PMT (H.264 on
    /// `V`), CRC left zero: the parsers here do not check it.
    fn psi(pid: u16, cc: u8) -> [u8; TS] {
        let mut p = [0xFFu8; TS];
        p[0] = 0x47;
        p[1] = 0x40 | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10 | cc;
        p[4] = 0; // pointer field
        let sec: &[u8] = if pid == 0 {
            &[
                0x00, 0xB0, 13, 0, 1, 0xC1, 0, 0, 0, 1, 0xF0, 0x00, 0, 0, 0, 0,
            ]
        } else {
            &[
                0x02, 0xB0, 18, 0, 1, 0xC1, 0, 0, 0xE1, 0x00, 0xF0, 0, 0x1B, 0xE1, 0x00, 0xF0, 0,
                0, 0, 0, 0,
            ]
        };
        p[5..5 + sec.len()].copy_from_slice(sec);
        p
    }

    /// A video PES start carrying an IDR (NAL type 5) or a non-IDR slice.
    fn video(cc: u8, idr: bool) -> [u8; TS] {
        let mut p = pes_pkt(V, cc, 90_000, None);
        // PES header (9 + 5 bytes of PTS) ends at 4 + 14; the ES follows.
        let es = [0, 0, 0, 1, if idr { 0x65 } else { 0x41 }, 0x88];
        p[18..18 + es.len()].copy_from_slice(&es);
        p
    }

    fn chunk(pkts: &[[u8; TS]]) -> Bytes {
        pkts.concat().into()
    }

    #[test]
    fn starts_with_psi_then_the_keyframe_and_rejoins_after_a_restart() {
        let mut j = Joiner::new();
        // PSI and a non-key picture: held back.
        assert!(j
            .push(chunk(&[psi(0, 0), psi(0x1000, 0), video(0, false)]))
            .is_none());
        // A keyframe in the middle of a chunk: start there, PSI first.
        let out = j
            .push(chunk(&[video(1, false), video(2, true), video(3, false)]))
            .expect("joined");
        assert_eq!(out.len(), 4 * TS);
        assert_eq!(&out[..TS], &psi(0, 0)[..]);
        assert_eq!(&out[TS..2 * TS], &psi(0x1000, 0)[..]);
        assert_eq!(&out[2 * TS..3 * TS], &video(2, true)[..]);
        // Then everything passes.
        let c = chunk(&[video(4, false)]);
        assert_eq!(j.push(c.clone()), Some(c));
        // After a restart: held back again until the next keyframe, with
        // the PSI learned before the restart (and updated while skipping).
        j.rejoin();
        j.skip(&chunk(&[psi(0, 1), psi(0x1000, 1)]));
        assert!(j.push(chunk(&[video(5, false)])).is_none());
        let out = j.push(chunk(&[video(6, true)])).expect("rejoined");
        assert_eq!(&out[..TS], &psi(0, 1)[..]);
        assert_eq!(&out[2 * TS..], &video(6, true)[..]);
    }

    #[test]
    fn a_stream_without_video_starts_after_the_psi_wait() {
        let mut j = Joiner::new();
        j.waiting = Some(Instant::now() - PSI_WAIT);
        let c = chunk(&[pes_pkt(0x200, 0, 0, None)]);
        assert_eq!(j.push(c.clone()).map(|b| b.len()), Some(c.len()));
    }
}
