//! The target of the UDP suite's traffic: one socket that echoes or sinks each datagram by its
//! first byte.
//!
//! Every datagram starts with a [`Stamp`]: the mode, a run number (so the target can tell one
//! measurement's datagrams from a late one of the last), a sequence number and the send time.
//! The sender and the target share this process's monotonic clock in any network namespace,
//! so the target measures one-way delay directly, and a pinger reads its round trip from the
//! echoed stamp.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::mode;

/// Bytes of a [`Stamp`]: mode, run, sequence number, send time.
pub const STAMP: usize = 18;

/// The header of every datagram the suite sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// [`mode::ECHO`] or [`mode::SINK`].
    pub mode: u8,
    pub run: u8,
    pub seq: u64,
    /// Nanoseconds since this process's epoch ([`now_ns`]).
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp at the start of `buf` (at least [`STAMP`] bytes).
    pub fn write(&self, buf: &mut [u8]) {
        buf[0] = self.mode;
        buf[1] = self.run;
        buf[2..10].copy_from_slice(&self.seq.to_be_bytes());
        buf[10..18].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// The stamp of a received datagram; `None` when it is too short to hold one.
    pub fn read(buf: &[u8]) -> Option<Stamp> {
        let field = |at: usize| buf.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes);
        Some(Stamp {
            mode: *buf.first()?,
            run: *buf.get(1)?,
            seq: field(2)?,
            sent_ns: field(10)?,
        })
    }
}

/// Nanoseconds since the first call in this process (a monotonic clock).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One datagram the target sank: its sequence number and one-way delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub seq: u64,
    pub delay_ns: u64,
}

/// The target: echoes [`mode::ECHO`] datagrams to their sender and counts the current run's
/// [`mode::SINK`] datagrams (and keeps their arrivals, when asked). Stops on drop.
pub struct Target {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// The run being counted (0: none).
    run: AtomicU8,
    /// The last run number handed out.
    last_run: AtomicU8,
    received: AtomicU64,
    /// The highest sequence number sunk in the current run, plus one (0: none yet).
    next_expected: AtomicU64,
    record: AtomicBool,
    arrivals: Mutex<Vec<Arrival>>,
    /// A thread asleep in [`Target::wait_past`].
    waiter: Mutex<Option<Thread>>,
    waiting: AtomicBool,
}

/// What the target sank in one run.
#[derive(Debug, Default)]
pub struct Sunk {
    pub received: u64,
    /// In arrival order; empty unless the run recorded them.
    pub arrivals: Vec<Arrival>,
}

impl Target {
    /// Serves on `socket` (bound by the caller, in whichever namespace; its buffers raised) on
    /// a thread of its own.
    pub fn start(socket: UdpSocket) -> io::Result<Target> {
        let addr = socket.local_addr()?;
        large_buffers(&socket);
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let thread = thread::spawn(move || serve(&socket, &serving));
        Ok(Target {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a new sink run (counters at zero, `record`: keep each arrival); its number.
    pub fn begin_run(&self, record: bool) -> u8 {
        let shared = &self.shared;
        // 1 to 255: 0 means no run.
        let run = shared.last_run.load(Ordering::Relaxed) % 255 + 1;
        shared.last_run.store(run, Ordering::Relaxed);
        // Stop counting the old run before the counters are reset for the new one.
        shared.run.store(0, Ordering::SeqCst);
        shared.received.store(0, Ordering::Relaxed);
        shared.next_expected.store(0, Ordering::Relaxed);
        shared.record.store(record, Ordering::Relaxed);
        lock(&shared.arrivals).clear();
        shared.run.store(run, Ordering::SeqCst);
        run
    }

    /// Ends the current run: what it sank.
    pub fn end_run(&self) -> Sunk {
        self.shared.run.store(0, Ordering::SeqCst);
        Sunk {
            received: self.shared.received.load(Ordering::Relaxed),
            arrivals: std::mem::take(&mut *lock(&self.shared.arrivals)),
        }
    }

    /// The highest sequence number sunk in this run, plus one.
    pub fn next_expected(&self) -> u64 {
        self.shared.next_expected.load(Ordering::SeqCst)
    }

    /// Sleeps until the run has sunk a datagram numbered `expected` or higher; false when
    /// none came within `patience`. One thread at a time: the target's thread wakes it.
    pub fn wait_past(&self, expected: u64, patience: Duration) -> bool {
        let shared = &self.shared;
        let deadline = Instant::now() + patience;
        *lock(&shared.waiter) = Some(thread::current());
        shared.waiting.store(true, Ordering::SeqCst);
        let arrived = loop {
            if self.next_expected() > expected {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            thread::park_timeout(left);
        };
        shared.waiting.store(false, Ordering::SeqCst);
        arrived
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let received_ns = now_ns();
        let Some(stamp) = Stamp::read(&buf[..len]) else {
            continue;
        };
        match stamp.mode {
            mode::ECHO => {
                let _ = socket.send_to(&buf[..len], from);
            }
            mode::SINK if stamp.run != 0 && stamp.run == shared.run.load(Ordering::Acquire) => {
                sink(shared, stamp, received_ns);
            }
            _ => {}
        }
    }
}

fn sink(shared: &Shared, stamp: Stamp, received_ns: u64) {
    shared.received.fetch_add(1, Ordering::Relaxed);
    shared
        .next_expected
        .fetch_max(stamp.seq + 1, Ordering::SeqCst);
    if shared.record.load(Ordering::Relaxed) {
        lock(&shared.arrivals).push(Arrival {
            seq: stamp.seq,
            delay_ns: received_ns.saturating_sub(stamp.sent_ns),
        });
    }
    if shared.waiting.load(Ordering::SeqCst)
        && let Some(waiter) = lock(&shared.waiter).as_ref()
    {
        waiter.unpark();
    }
}

/// Socket buffers as large as the machine allows (4 MiB here), so that the measuring side is
/// never where a datagram is dropped.
pub fn large_buffers(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_a_short_datagram_has_none() {
        let stamp = Stamp {
            mode: mode::SINK,
            run: 7,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 1,
        };
        let mut buf = [0u8; 64];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(Stamp::read(&buf[..STAMP]), Some(stamp));
        assert_eq!(Stamp::read(&buf[..STAMP - 1]), None);
        assert_eq!(Stamp::read(&[]), None);
    }

    fn sink_datagram(run: u8, seq: u64) -> [u8; 32] {
        let mut buf = [0u8; 32];
        Stamp {
            mode: mode::SINK,
            run,
            seq,
            sent_ns: now_ns(),
        }
        .write(&mut buf);
        buf
    }

    #[test]
    fn the_target_counts_only_its_current_run_echoes_and_wakes_a_waiter() {
        let target = Target::start(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(target.addr()).unwrap();
        let old = target.begin_run(false);
        let run = target.begin_run(true);
        assert_ne!(old, run);
        socket.send(&sink_datagram(old, 99)).unwrap();
        for seq in [0, 2, 1] {
            socket.send(&sink_datagram(run, seq)).unwrap();
        }
        assert!(target.wait_past(2, Duration::from_secs(5)), "seq 2 arrives");
        assert!(
            !target.wait_past(3, Duration::from_millis(20)),
            "nothing past 2"
        );
        let sunk = target.end_run();
        assert_eq!(sunk.received, 3, "the old run's datagram is not counted");
        let seqs: Vec<u64> = sunk.arrivals.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [0, 2, 1]);
        let mut echo = [0u8; 32];
        Stamp {
            mode: mode::ECHO,
            run: 0,
            seq: 5,
            sent_ns: 1,
        }
        .write(&mut echo);
        socket.send(&echo).unwrap();
        let mut back = [0u8; 64];
        let len = socket.recv(&mut back).unwrap();
        assert_eq!(&back[..len], &echo);
    }
}
