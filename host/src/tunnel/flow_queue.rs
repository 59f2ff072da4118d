//! A UDP flow's queue of datagrams (SPEC §11): bounded in datagrams and in bytes, for the flow
//! and for all the flows that share one [`Budget`] (a client listener's, or a connection's on
//! the server), so a flow that cannot drain — the server unreachable, a stalled stream — drops
//! and counts instead of growing.
//!
//! Each queue has one producer (the listener's loop, or the connection's DATAGRAM reader), so
//! checking the bounds before adding is exact; consumers only give bytes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Datagrams one flow queues, each way, before further ones are dropped.
pub const FLOW_DATAGRAMS: usize = 256;
/// Bytes one flow queues.
pub const FLOW_BYTES: usize = 1024 * 1024;
/// Bytes all the flows of one budget queue together.
pub const BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// Bytes queued by the flows that share it.
#[derive(Debug, Default)]
pub struct Budget(AtomicUsize);

impl Budget {
    pub fn queued(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What both ends of one queue share.
#[derive(Debug)]
struct Shared {
    queued: AtomicUsize,
    dropped: AtomicU64,
    budget: Arc<Budget>,
}

impl Shared {
    fn give_back(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
        self.budget.0.fetch_sub(len, Ordering::Relaxed);
    }
}

/// The producer's end.
#[derive(Debug)]
pub struct Sender {
    queue: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
}

/// The flow's end.
#[derive(Debug)]
pub struct Receiver {
    queue: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
}

/// A queue drawing on `budget`.
pub fn channel(budget: Arc<Budget>) -> (Sender, Receiver) {
    let (queue, receiver) = mpsc::channel(FLOW_DATAGRAMS);
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        budget,
    });
    let sender = Sender {
        queue,
        shared: shared.clone(),
    };
    (
        sender,
        Receiver {
            queue: receiver,
            shared,
        },
    )
}

impl Sender {
    /// Queues `datagram`, or drops and counts it when the flow or its budget is full. The
    /// datagram comes back when the flow has ended.
    pub fn push(&self, datagram: Bytes) -> Result<(), Bytes> {
        if self.queue.is_closed() {
            return Err(datagram);
        }
        let len = datagram.len();
        let shared = &self.shared;
        if shared.queued.load(Ordering::Relaxed) + len > FLOW_BYTES
            || shared.budget.queued() + len > BUDGET_BYTES
        {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        shared.queued.fetch_add(len, Ordering::Relaxed);
        shared.budget.0.fetch_add(len, Ordering::Relaxed);
        match self.queue.try_send(datagram) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared.give_back(len);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(datagram)) => {
                shared.give_back(len);
                Err(datagram)
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// The datagrams dropped since the last take, by either end.
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Receiver {
    /// The next datagram; `None` once the producer is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let datagram = self.queue.recv().await?;
        self.shared.give_back(datagram.len());
        Some(datagram)
    }

    /// The next datagram if one is queued.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let datagram = self.queue.try_recv().ok()?;
        self.shared.give_back(datagram.len());
        Some(datagram)
    }

    /// The datagrams dropped since the last take.
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    /// What is still queued is dropped, counted (the sender's [`Sender::take_dropped`] sees
    /// it), and its bytes go back to the budget.
    fn drop(&mut self) {
        self.queue.close();
        while let Ok(datagram) = self.queue.try_recv() {
            self.shared.give_back(datagram.len());
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_flow_or_budget_drops_and_counts_and_bytes_come_back() {
        let budget = Arc::new(Budget::default());
        let (sender, mut receiver) = channel(budget.clone());
        let big = Bytes::from(vec![1u8; 60_000]);
        for _ in 0..20 {
            sender.push(big.clone()).unwrap();
        }
        // 17 × 60,000 fit in 1 MiB; three were dropped.
        assert_eq!(budget.queued(), 17 * 60_000);
        assert_eq!(sender.take_dropped(), 3);
        for _ in 0..FLOW_DATAGRAMS {
            sender.push(Bytes::new()).unwrap();
        }
        assert_eq!(receiver.take_dropped(), 17, "the count bound drops too");
        assert_eq!(receiver.recv().await.unwrap(), big);
        assert_eq!(budget.queued(), 16 * 60_000);

        // The budget binds across flows: 16 full flows hold 16 × 1,020,000 bytes, which
        // leaves a 17th room for 7 more datagrams of 60,000 within 16 MiB.
        drop(receiver);
        assert!(sender.push(big.clone()).is_err(), "the flow has ended");
        assert_eq!(budget.queued(), 0, "its bytes came back");
        assert_eq!(
            sender.take_dropped(),
            255,
            "what it still held counts as dropped"
        );
        let mut flows = Vec::new();
        for _ in 0..16 {
            let (flow, flow_receiver) = channel(budget.clone());
            for _ in 0..17 {
                flow.push(big.clone()).unwrap();
            }
            assert_eq!(flow.take_dropped(), 0);
            flows.push((flow, flow_receiver));
        }
        let (last, _last_receiver) = channel(budget.clone());
        for _ in 0..8 {
            last.push(big.clone()).unwrap();
        }
        assert_eq!(last.take_dropped(), 1);
        assert_eq!(budget.queued(), 16 * 17 * 60_000 + 7 * 60_000);
        drop(flows);
        assert_eq!(budget.queued(), 7 * 60_000);
    }
}
