//! castpoint's B/IP transport: the stack's `BipTransport` behind a filter that answers the few confirmed requests the stack would answer wrongly before any castpoint hook runs.
//!
//! # Why a transport wrapper
//!
//! rusty-bacnet 0.15 decides three answers itself, ahead of every policy
//! and handler castpoint can install (issue 18, docs/bacnet-pics.md):
//!
//! - DeviceCommunicationControl with an undefined enable-disable value and
//!   ReinitializeDevice with an undefined reinitialized-state are answered
//!   with an Error (SERVICES / OTHER, or SERVICE_REQUEST_DENIED after the
//!   password check), where Clause 18.9 / 20.1.8 ask for Reject
//!   UNDEFINED_ENUMERATION (reject reason 8), decided on the request's
//!   syntax, before any password check (as bacnet-stack does).
//! - CreateObject is claimed in the stack's fixed Protocol_Services_Supported
//!   and would create the stack's own objects outside the point database;
//!   castpoint's object set is its configuration, so Clause 15.3.1.3.1 asks
//!   for Error OBJECT / DYNAMIC_CREATION_NOT_SUPPORTED (a CreateObject-Error
//!   with first-failed-element-number 0), which the stack's policy hook
//!   cannot give (it can only deny).
//! - ConfirmedAuditNotification is claimed too, and refused by the stack
//!   whenever no Audit Log is configured to store into. castpoint executes
//!   it the way it executes ConfirmedEventNotification: a well-formed
//!   notification is acknowledged (SimpleACK) and not kept, since castpoint
//!   has no Audit Log (Clause 13.21.2: no local action is assigned).
//!
//! The stack is generic over its data link (`TransportPort`), so the one
//! place castpoint sees a request before the stack is the link's receive
//! channel. [`Filtered`] delegates every `TransportPort` method to the
//! inner transport (the trait's "wrappers must delegate" contract: the
//! registered Network Port, its lease, the group-destination rules, the
//! NPDU limits), and in `start` puts a task between the inner transport's
//! receiver and the stack's: a frame [`answer`] has an answer for is
//! answered through the inner transport's `send_unicast` (so it leaves from
//! the device's own socket) and not passed on; every other frame passes
//! untouched, in order.
//!
//! # What is answered here, and what is left to the stack
//!
//! Only an unsegmented Confirmed-Request that came by unicast, with no DNET
//! (a frame addressed to another network is the stack's to judge) and no
//! link reply channel, whose whole service request is well-formed apart
//! from the value judged. A malformed request, a segmented one, a broadcast
//! one and everything else go to the stack unchanged, which rejects or
//! ignores them as before. A request routed to castpoint (SNET/SADR present)
//! is answered back the same way: DNET/DADR = the request's SNET/SADR, hop
//! count 255, sent to the router it came through. The reply keeps the
//! request's network priority (Clause 6.2.2).
//!
//! Decoding is bounded and never panics: every read is a checked slice
//! access, every loop consumes at least one octet, and the input is one
//! datagram (the unit tests feed it hostile bytes).
//!
//! # Turning the stack's dispatch loop ([`Nudge`])
//!
//! Every local change castpoint hands the stack (a COV push, an alarm
//! poke: `set_present_value_local`) runs its second half as a task in the
//! stack's request task set, and only the dispatch loop joins those tasks:
//! at the top of each turn, and on a 100-ms timer that is armed only when a
//! turn begins with the set non-empty. A loop that went idle with the set
//! empty is turned by nothing but a received frame, so on a quiet network
//! every later local change kept its finished task (about 16 KB) for good:
//! measured at 500 routes, 1.9 MB/s of heap with no BACnet client, none
//! with one polling (issue 25). The [`Nudge`] hands the stack one frame
//! that turns the loop and does nothing else.

use std::sync::Arc;

use bacnet_transport::port::{
    Bip6Port, BipPort, DataAttribute, GroupDestinations, ReceivedNpdu, TransportPort,
};
// bacnet-npdu's type, through bacnet-encoding's re-export (not a direct
// dependency of castpoint).
use bacnet_encoding::npdu::view::NpduLimits;
use bacnet_transport::port::TransportProvenance;
use bacnet_types::error::Error;
use bacnet_types::MacAddr;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::alarms::AckSources;
// The classifier (pure decoding of untrusted datagrams) lives in its own
// std-only file so the fuzz crate can compile exactly it.
pub use super::classify::*;

/// The stack's own receive channel capacity for B/IP (bacnet-transport's
/// `NPDU_CHANNEL_CAPACITY`), kept so the filter adds no buffering of its own.
const CHANNEL_CAPACITY: usize = 256;

/// A transport that answers [`answer`]'s requests itself and delegates
/// everything else to `T`.
pub struct Filtered<T: TransportPort + 'static> {
    /// Shared with the filter task, which sends its answers through it.
    /// The `&mut` methods need it unshared: before start it is, and `stop`
    /// ends the filter task first.
    inner: Arc<T>,
    filter: Option<JoinHandle<()>>,
    /// (object identifier as encoded, property) pairs castpoint holds
    /// read-only although the stack's object would take a write.
    read_only: Arc<[ReadOnly]>,
    /// Where the requester of each AcknowledgeAlarm is noted (alarms.rs).
    acks: Option<Arc<AckSources>>,
    /// Armed with the stack's receive channel when the link starts.
    nudge: Option<Nudge>,
}

/// A Who-Is for device instances 4194303..4194303: the reserved wildcard
/// instance, which no configured device has (castpoint's configuration
/// refuses it), so it matches no device. The stack drops it
/// before its Who-Is rate limits (counted as received, out of range) and
/// answers nothing. NPDU version 1, no addresses, unconfirmed request
/// Who-Is with context tags 0 and 1 of three octets each.
const TURN_FRAME: [u8; 12] = [
    0x01, 0x00, 0x10, 0x08, 0x0B, 0x3F, 0xFF, 0xFF, 0x1B, 0x3F, 0xFF, 0xFF,
];

/// Turns the stack's dispatch loop on demand, so it joins the tasks of the
/// local changes castpoint made (see the module text). Holds the stack's
/// receive channel weakly: a stopped stack's channel still closes.
#[derive(Clone, Default)]
pub struct Nudge(Arc<parking_lot::Mutex<Option<Armed>>>);

/// The stack's receive channel, held weakly, and the device's own address
/// (the turn frame's source).
type Armed = (mpsc::WeakSender<ReceivedNpdu>, MacAddr);

impl Nudge {
    fn arm(&self, to_stack: &mpsc::Sender<ReceivedNpdu>, mac: &[u8]) {
        *self.0.lock() = Some((to_stack.downgrade(), MacAddr::from_slice(mac)));
    }

    /// Hands the stack [`TURN_FRAME`], as if the device had sent it to
    /// itself. False when the link is not running, or its channel is full
    /// (then the loop is busy turning anyway).
    pub fn nudge(&self) -> bool {
        let Some((tx, mac)) = self.0.lock().clone() else {
            return false;
        };
        let Some(tx) = tx.upgrade() else {
            return false;
        };
        let sent = tx
            .try_send(ReceivedNpdu {
                npdu: bytes::Bytes::from_static(&TURN_FRAME),
                source_mac: mac,
                link_layer_group: false,
                data_attributes: Vec::new(),
                provenance: TransportProvenance::unverified(),
                direct_response: None,
                reply_tx: None,
            })
            .is_ok();
        if sent {
            crate::counters::BACNET_TURN_FRAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        sent
    }
}

impl<T: TransportPort + 'static> Filtered<T> {
    /// `read_only`: properties the stack's objects would accept that
    /// castpoint keeps read-only (the Network Port's link settings and
    /// Description): a WriteProperty to one is answered PROPERTY /
    /// WRITE_ACCESS_DENIED here, as for any other read-only property.
    pub fn new(inner: T, read_only: Vec<ReadOnly>) -> Self {
        Filtered {
            inner: Arc::new(inner),
            filter: None,
            read_only: read_only.into(),
            acks: None,
            nudge: None,
        }
    }

    /// Arms `nudge` with the stack's receive channel once the link starts.
    pub fn with_nudge(mut self, nudge: Nudge) -> Self {
        self.nudge = Some(nudge);
        self
    }

    /// Notes the requester of every AcknowledgeAlarm in `acks`.
    pub fn with_ack_sources(mut self, acks: Arc<AckSources>) -> Self {
        self.acks = Some(acks);
        self
    }

    fn inner_mut(&mut self) -> Result<&mut T, Error> {
        Arc::get_mut(&mut self.inner).ok_or_else(|| {
            Error::Encoding("castpoint transport: inner transport still shared".into())
        })
    }

    /// Ends the filter task and waits until it has dropped its share of the
    /// inner transport.
    async fn end_filter(&mut self) {
        if let Some(task) = self.filter.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl<T: TransportPort + 'static> Drop for Filtered<T> {
    fn drop(&mut self) {
        if let Some(task) = self.filter.take() {
            task.abort();
        }
    }
}

/// Moves frames from the inner transport to the stack, answering the ones
/// [`answer`] answers.
async fn filter<T: TransportPort + 'static>(
    inner: Arc<T>,
    read_only: Arc<[ReadOnly]>,
    acks: Option<Arc<AckSources>>,
    mut from_link: mpsc::Receiver<ReceivedNpdu>,
    to_stack: mpsc::Sender<ReceivedNpdu>,
) {
    while let Some(frame) = from_link.recv().await {
        if let Some(t) = apdu_type(&frame.npdu) {
            crate::counters::bacnet_received(t);
            if t == 0 {
                if let (Some(acks), Some((oid, source))) =
                    (&acks, acknowledge_alarm_request(&frame.npdu))
                {
                    acks.note(oid, super::peer_from_mac(&frame.source_mac), source);
                }
            }
        }
        // A group-addressed confirmed request is dropped by the stack
        // (Clause 6.3); a link reply channel (MS/TP) or a direct-response
        // capability (SC) means the reply must take that path: the stack's.
        let ours =
            !frame.link_layer_group && frame.reply_tx.is_none() && frame.direct_response.is_none();
        if ours {
            if let Some(reply) = answer(&frame.npdu, &read_only) {
                count_sent(&reply);
                if let Err(e) = inner.send_unicast(&reply, &frame.source_mac).await {
                    tracing::debug!("bacnet: answer not sent: {e}");
                }
                continue;
            }
        }
        if to_stack.send(frame).await.is_err() {
            break; // the stack stopped
        }
    }
}

impl<T: TransportPort + 'static> TransportPort for Filtered<T> {
    fn bip_broadcast_endpoint(&self) -> Option<std::net::SocketAddrV4> {
        self.inner.bip_broadcast_endpoint()
    }

    fn supports_local_nonrouter_number_controls(&self) -> bool {
        self.inner.supports_local_nonrouter_number_controls()
    }

    fn bip_port(&self) -> Option<BipPort> {
        self.inner.bip_port()
    }

    fn bip6_port(&self) -> Option<Bip6Port> {
        self.inner.bip6_port()
    }

    fn retain_network_port_lease_internal(&mut self, lease: Arc<()>) -> Result<(), Error> {
        self.inner_mut()?.retain_network_port_lease_internal(lease)
    }

    fn prepare_for_routing(&mut self) {
        if let Ok(inner) = self.inner_mut() {
            inner.prepare_for_routing();
        }
    }

    async fn start(&mut self) -> Result<mpsc::Receiver<ReceivedNpdu>, Error> {
        if self.filter.is_some() {
            return Err(Error::Transport(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "castpoint transport already started",
            )));
        }
        let from_link = self.inner_mut()?.start().await?;
        let (to_stack, rx) = mpsc::channel(CHANNEL_CAPACITY);
        if let Some(n) = &self.nudge {
            n.arm(&to_stack, self.inner.local_mac());
        }
        self.filter = Some(crate::tasks::spawn_owned(filter(
            Arc::clone(&self.inner),
            Arc::clone(&self.read_only),
            self.acks.clone(),
            from_link,
            to_stack,
        )));
        Ok(rx)
    }

    async fn stop(&mut self) -> Result<(), Error> {
        self.end_filter().await;
        self.inner_mut()?.stop().await
    }

    fn abort(&mut self) {
        if let Some(task) = self.filter.take() {
            task.abort();
        }
        // Unshared unless the aborted task has not been dropped yet; then
        // the inner transport aborts itself when that last share drops
        // (BipTransport's Drop calls its abort).
        if let Ok(inner) = self.inner_mut() {
            inner.abort();
        }
    }

    async fn send_unicast(&self, npdu: &[u8], mac: &[u8]) -> Result<(), Error> {
        count_sent(npdu);
        self.inner.send_unicast(npdu, mac).await
    }

    fn send_unicast_with_data_attributes<'a>(
        &'a self,
        npdu: &'a [u8],
        mac: &'a [u8],
        data_attributes: &'a [DataAttribute],
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'a {
        count_sent(npdu);
        self.inner
            .send_unicast_with_data_attributes(npdu, mac, data_attributes)
    }

    async fn send_broadcast(&self, npdu: &[u8]) -> Result<(), Error> {
        count_sent(npdu);
        self.inner.send_broadcast(npdu).await
    }

    fn send_broadcast_with_data_attributes<'a>(
        &'a self,
        npdu: &'a [u8],
        data_attributes: &'a [DataAttribute],
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'a {
        count_sent(npdu);
        self.inner
            .send_broadcast_with_data_attributes(npdu, data_attributes)
    }

    fn local_mac(&self) -> &[u8] {
        self.inner.local_mac()
    }

    fn local_receive_apdu_capacity(&self) -> u16 {
        self.inner.local_receive_apdu_capacity()
    }

    fn egress_apdu_limit(&self) -> u16 {
        self.inner.egress_apdu_limit()
    }

    fn max_npdu(&self) -> NpduLimits {
        self.inner.max_npdu()
    }

    fn max_npdu_changes(&self) -> Option<watch::Receiver<NpduLimits>> {
        self.inner.max_npdu_changes()
    }

    fn is_broadcast_mac(&self, mac: &[u8]) -> bool {
        self.inner.is_broadcast_mac(mac)
    }

    fn is_group_destination(&self, mac: &[u8]) -> bool {
        self.inner.is_group_destination(mac)
    }

    fn group_destinations(&self) -> GroupDestinations {
        self.inner.group_destinations()
    }

    fn local_broadcast_destinations(&self) -> GroupDestinations {
        self.inner.local_broadcast_destinations()
    }
}

/// Counts an outgoing APDU for `/metrics` when it is an error answer.
fn count_sent(npdu: &[u8]) {
    if let Some(t) = apdu_type(npdu) {
        crate::counters::bacnet_sent(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turn frame is an unaddressed NPDU carrying a Who-Is whose range
    /// holds only the reserved instance, so no configurable device answers
    /// it (config refuses 4194303: `keys_tests`).
    #[test]
    fn the_turn_frame_is_a_who_is_no_device_answers() {
        // NPDU: version 1, control 0 (no DNET/SNET, no reply expected).
        assert_eq!(&TURN_FRAME[..2], &[0x01, 0x00]);
        // Unconfirmed request (PDU type 1), service Who-Is (8).
        assert_eq!(TURN_FRAME[2] >> 4, 1);
        assert_eq!(TURN_FRAME[3], 8);
        let req = bacnet_services::who_is::WhoIsRequest::decode(&TURN_FRAME[4..])
            .expect("the stack decodes it");
        let range = req.range.expect("a bounded range");
        assert_eq!((range.low(), range.high()), (4_194_303, 4_194_303));
        for instance in [0, 1, 389_001, 4_194_302] {
            assert!(!range.contains(instance), "{instance} would answer");
        }
    }

    /// Before the link starts, and after the stack dropped its channel, a
    /// nudge hands nothing over (and never keeps the channel open).
    #[tokio::test]
    async fn a_nudge_needs_a_running_link_and_never_holds_it_open() {
        let n = Nudge::default();
        assert!(!n.nudge(), "nothing armed");
        let (tx, mut rx) = mpsc::channel(2);
        n.arm(&tx, &[127, 0, 0, 1, 0xBA, 0xC0]);
        assert!(n.nudge());
        let f = rx.recv().await.expect("a frame");
        assert_eq!(&f.npdu[..], &TURN_FRAME[..]);
        assert_eq!(&f.source_mac[..], &[127, 0, 0, 1, 0xBA, 0xC0]);
        assert!(!f.link_layer_group && f.reply_tx.is_none() && f.direct_response.is_none());
        // Full channel: refused, not waited for.
        assert!(n.nudge() && n.nudge());
        assert!(!n.nudge(), "a full channel is not waited on");
        // The link's sender gone: the weak share does not keep it open.
        drop(tx);
        while rx.recv().await.is_some() {}
        assert!(!n.nudge());
    }
}
