//! The interactive application: 1 KiB messages written on one TCP connection on a fixed
//! schedule, one every [`INTERVAL`], and read back from the echoing target.
//!
//! Each message carries its sequence number and send time, and a thread of its own writes
//! them, so a late reply never holds back the next message (no coordinated omission): a
//! round trip is the time from writing a message to reading its last echoed byte, and a
//! stall shows in every message that waits behind it, as an interactive user would feel it.
//! The sender and the reader share this process's clock.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::cc::report::quantile;
use crate::linkem::Link;
use crate::mode;

/// The size of a message.
pub const MESSAGE: usize = 1024;
/// One message every 20 ms: 50 a second, 0.4 Mbit/s each way.
pub const INTERVAL: Duration = Duration::from_millis(20);
/// How long the reader waits for any echo before giving the connection up.
const READ_PATIENCE: Duration = Duration::from_secs(5);

/// The round trips of one run, in the order the messages were sent.
#[derive(Debug, Clone, Default)]
pub struct Echoes {
    pub sent: u64,
    pub rtt_ms: Vec<f64>,
}

/// p50, p90, p99 and the largest round trip, in milliseconds (`None` without samples).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Echoes {
    pub fn summary(&self) -> Summary {
        let q = |q| quantile(&self.rtt_ms, q);
        Summary {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

/// Connects from namespace A to `to` (retrying while the listener or the tunnel behind it is
/// not up yet, for up to `patience`), Nagle off, sends the echo mode byte and waits for one
/// message's echo: the path is ready.
pub fn connect(link: &Link, to: SocketAddr, patience: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = link
            .run_in_a(|| TcpStream::connect(to))
            .map_err(|e| e.to_string())?
            .and_then(|mut stream| {
                stream.set_nodelay(true)?;
                stream.write_all(&[mode::ECHO])?;
                stream.set_read_timeout(Some(patience))?;
                round_trip(&mut stream)?;
                Ok(stream)
            });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no echo from {to} within {patience:?}: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends a message every [`INTERVAL`] for `duration` on `stream` (made by [`connect`]) and
/// times each echo.
pub fn run(stream: &TcpStream, duration: Duration) -> Result<Echoes, String> {
    let count = (duration.as_nanos() / INTERVAL.as_nanos()) as u64;
    let epoch = Instant::now();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let mut message = [0u8; MESSAGE];
        for seq in 0..count {
            let due = epoch + INTERVAL * seq as u32;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            stamp(&mut message, seq, epoch.elapsed());
            writer.write_all(&message)?;
        }
        Ok(())
    });
    let received = receive(stream, count, epoch);
    if received.is_err() {
        // Ends the sender's schedule early.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent = sender.join().map_err(|_| "the echo sender panicked")?;
    sent.map_err(|e| format!("writing an echo message: {e}"))?;
    let rtt_ms = received?;
    Ok(Echoes {
        sent: count,
        rtt_ms,
    })
}

/// Reads `count` echoed messages, each timed against the send time it carries.
fn receive(mut stream: &TcpStream, count: u64, epoch: Instant) -> Result<Vec<f64>, String> {
    stream
        .set_read_timeout(Some(READ_PATIENCE))
        .map_err(|e| e.to_string())?;
    let mut rtt_ms = Vec::with_capacity(count as usize);
    let mut message = [0u8; MESSAGE];
    for expected in 0..count {
        stream
            .read_exact(&mut message)
            .map_err(|e| format!("reading echo {expected} of {count}: {e}"))?;
        let (seq, sent) = read_stamp(&message);
        if seq != expected {
            return Err(format!("echo {seq} came back where {expected} was due"));
        }
        let rtt = epoch.elapsed().saturating_sub(sent);
        rtt_ms.push(rtt.as_secs_f64() * 1e3);
    }
    Ok(rtt_ms)
}

/// One message out and back, untimed.
fn round_trip(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut message = [0u8; MESSAGE];
    stream.write_all(&message)?;
    stream.read_exact(&mut message)
}

/// The sequence number and the send time (since the run's epoch) at the message's start.
fn stamp(message: &mut [u8; MESSAGE], seq: u64, sent: Duration) {
    message[..8].copy_from_slice(&seq.to_be_bytes());
    message[8..16].copy_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
}

fn read_stamp(message: &[u8; MESSAGE]) -> (u64, Duration) {
    let field = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&message[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    (field(0), Duration::from_nanos(field(8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_as_written() {
        let mut message = [0xa5u8; MESSAGE];
        stamp(&mut message, 749, Duration::from_nanos(14_980_123_456));
        assert_eq!(
            read_stamp(&message),
            (749, Duration::from_nanos(14_980_123_456))
        );
        assert!(message[16..].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn the_summary_takes_nearest_ranks_and_the_largest() {
        let echoes = Echoes {
            sent: 100,
            rtt_ms: (1..=100).rev().map(f64::from).collect(),
        };
        let s = echoes.summary();
        assert_eq!(
            (s.p50, s.p90, s.p99, s.max),
            (Some(51.0), Some(90.0), Some(99.0), Some(100.0))
        );
        assert!(Echoes::default().summary().p99.is_none());
    }
}
