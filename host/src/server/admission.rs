//! Which new QUIC connections the server takes on, before it keeps any state for them
//! (SPEC §7, hostile traffic).
//!
//! Handshakes in progress are budgeted apart from established connections: a flood of
//! Initials can fill the handshake budget, never the room for clients that finished theirs.
//! Each source address (an IPv4 /32, an IPv6 /64) may have only so many handshakes in progress;
//! once many are in progress overall, a client must first prove it owns its address (QUIC
//! Retry), so a flood from spoofed addresses costs no state, and handshakes get a shorter
//! time-out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock::lock;

/// Handshakes in progress beyond which new clients must prove their address first.
pub const RETRY_THRESHOLD: usize = 64;
/// Handshakes in progress at most; beyond it new Initials are dropped unanswered (the client
/// sends its Initial again). A half-open handshake costs at most 32 KiB (docs/SECURITY.md).
pub const MAX_HANDSHAKES: usize = 1024;
/// The handshake time-out while more than [`RETRY_THRESHOLD`] handshakes are in progress.
pub const PRESSED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What to do with a new connection attempt.
#[derive(Debug)]
pub enum Verdict {
    /// Take it on; the slot is given back when the guard is dropped.
    Accept(HandshakeSlot),
    /// Ask the client to prove its address first (QUIC Retry).
    Retry,
    /// Refuse it, counted under this reason.
    Refuse(&'static str),
    /// Drop it unanswered, counted under this reason.
    Ignore(&'static str),
}

/// The server's handshake and connection budgets.
#[derive(Debug)]
pub struct Admission {
    per_address: usize,
    retry_threshold: usize,
    max_connections: usize,
    established: AtomicUsize,
    in_progress: Arc<InProgress>,
}

#[derive(Debug, Default)]
struct InProgress {
    total: AtomicUsize,
    by_source: Mutex<HashMap<Source, usize>>,
}

/// A source address as the per-address budget sees it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(addr: SocketAddr) -> Source {
        match addr.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6((u128::from(v6) & !(u64::MAX as u128)).into())),
            },
            v4 => Source(v4),
        }
    }
}

impl Admission {
    pub fn new(per_address: usize, max_connections: usize) -> Admission {
        Admission {
            per_address,
            retry_threshold: RETRY_THRESHOLD,
            max_connections,
            established: AtomicUsize::new(0),
            in_progress: Arc::default(),
        }
    }

    /// Asks clients to prove their address once `threshold` handshakes are in progress
    /// (instead of [`RETRY_THRESHOLD`]); 0 asks every client.
    pub fn retry_from(mut self, threshold: usize) -> Admission {
        self.retry_threshold = threshold;
        self
    }

    /// Judges a new connection attempt from `remote`; `validated` is whether the client has
    /// already proved its address (it answered a Retry).
    pub fn judge(&self, remote: SocketAddr, validated: bool) -> Verdict {
        let total = self.in_progress.total.load(Ordering::Relaxed);
        if total >= self.retry_threshold && !validated {
            return Verdict::Retry;
        }
        if total >= MAX_HANDSHAKES {
            return Verdict::Ignore("too_many_handshakes");
        }
        if self.established.load(Ordering::Relaxed) >= self.max_connections {
            return Verdict::Refuse("too_many_connections");
        }
        let source = Source::of(remote);
        let mut by_source = lock(&self.in_progress.by_source);
        let count = by_source.entry(source).or_default();
        if *count >= self.per_address {
            return Verdict::Refuse("too_many_handshakes_from_address");
        }
        *count += 1;
        self.in_progress.total.fetch_add(1, Ordering::Relaxed);
        Verdict::Accept(HandshakeSlot {
            in_progress: self.in_progress.clone(),
            source,
        })
    }

    /// How long a handshake may take now: shorter while many are in progress.
    pub fn handshake_timeout(&self, configured: Duration) -> Duration {
        if self.in_progress.total.load(Ordering::Relaxed) > RETRY_THRESHOLD {
            configured.min(PRESSED_HANDSHAKE_TIMEOUT)
        } else {
            configured
        }
    }

    /// Counts an established connection until the guard is dropped; `None` when the server
    /// already holds its maximum.
    pub fn try_establish(self: &Arc<Self>) -> Option<Established> {
        let max = self.max_connections;
        self.established
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Established(self.clone()))
    }

    /// Handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.in_progress.total.load(Ordering::Relaxed)
    }
}

/// One handshake in progress, given back on drop.
#[derive(Debug)]
pub struct HandshakeSlot {
    in_progress: Arc<InProgress>,
    source: Source,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_source = lock(&self.in_progress.by_source);
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
        self.in_progress.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One established connection, counted until dropped.
#[derive(Debug)]
pub struct Established(Arc<Admission>);

impl Drop for Established {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn accepted(verdict: Verdict) -> HandshakeSlot {
        match verdict {
            Verdict::Accept(slot) => slot,
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    #[test]
    fn each_address_gets_its_own_budget() {
        let admission = Admission::new(2, 100);
        let a = accepted(admission.judge(addr("127.0.0.2:1000"), false));
        let _b = accepted(admission.judge(addr("127.0.0.2:1001"), false));
        assert!(matches!(
            admission.judge(addr("127.0.0.2:1002"), false),
            Verdict::Refuse("too_many_handshakes_from_address")
        ));
        // Another address is not affected, and a finished handshake frees its slot.
        let _c = accepted(admission.judge(addr("127.0.0.1:1000"), false));
        drop(a);
        let _d = accepted(admission.judge(addr("127.0.0.2:1003"), false));
        assert_eq!(admission.handshakes(), 3);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_addresses_are_ipv4() {
        let admission = Admission::new(1, 100);
        let _a = accepted(admission.judge(addr("[2001:db8:1:2::1]:1"), false));
        assert!(matches!(
            admission.judge(addr("[2001:db8:1:2:ffff::9]:1"), false),
            Verdict::Refuse(_)
        ));
        let _b = accepted(admission.judge(addr("[2001:db8:1:3::1]:1"), false));
        let _c = accepted(admission.judge(addr("10.0.0.1:1"), false));
        assert!(matches!(
            admission.judge(addr("[::ffff:10.0.0.1]:2"), false),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn many_handshakes_call_for_retry_then_for_silence() {
        let admission = Admission::new(usize::MAX, usize::MAX);
        let slots: Vec<HandshakeSlot> = (0..RETRY_THRESHOLD)
            .map(|i| {
                accepted(admission.judge(addr(&format!("10.0.{}.{}:1", i / 250, i % 250)), false))
            })
            .collect();
        assert!(matches!(
            admission.judge(addr("192.0.2.1:1"), false),
            Verdict::Retry
        ));
        // A client that answered the Retry is taken on.
        let validated = accepted(admission.judge(addr("192.0.2.1:1"), true));
        assert_eq!(
            admission.handshake_timeout(Duration::from_secs(10)),
            PRESSED_HANDSHAKE_TIMEOUT
        );
        drop(validated);
        drop(slots);
        assert_eq!(admission.handshakes(), 0);
        assert_eq!(
            admission.handshake_timeout(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_retry_threshold_of_zero_asks_every_client_to_prove_its_address() {
        let admission = Admission::new(10, 10).retry_from(0);
        assert!(matches!(
            admission.judge(addr("127.0.0.1:1"), false),
            Verdict::Retry
        ));
        let _slot = accepted(admission.judge(addr("127.0.0.1:1"), true));
    }

    #[test]
    fn established_connections_have_their_own_limit() {
        let admission = Arc::new(Admission::new(10, 1));
        let first = admission.try_establish().unwrap();
        assert!(admission.try_establish().is_none());
        assert!(matches!(
            admission.judge(addr("127.0.0.1:1"), false),
            Verdict::Refuse("too_many_connections")
        ));
        drop(first);
        let _slot = accepted(admission.judge(addr("127.0.0.1:1"), false));
    }
}
