//! Round trips of small datagrams: sent on a fixed schedule to the echoing target (directly
//! or through the tunnel), each timed by the send time its echo carries back, so a lost or
//! late reply never holds up the next.

use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::delay::{Spread, json_ms};
use super::senders::set_timer_slack_1ns;
use super::target::{STAMP, Stamp, large_buffers, now_ns};
use crate::mode;

/// Round trips of echoed datagrams.
#[derive(Debug, Clone, Default)]
pub struct Pings {
    pub sent: u64,
    /// Milliseconds, in the order the replies came.
    pub rtt_ms: Vec<f64>,
    /// The sequence number of each of `rtt_ms` (empty when not known).
    pub seqs: Vec<u64>,
}

impl Pings {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.rtt_ms.len() as u64)
    }

    /// Another series' samples added to these (without sequence numbers: they would repeat).
    pub fn extend(&mut self, other: Pings) {
        self.sent += other.sent;
        self.rtt_ms.extend(other.rtt_ms);
        self.seqs.clear();
    }

    /// Each datagram's round trip in the order they were sent, `null` for a lost one, as JSON.
    pub fn series_json(&self) -> String {
        let mut series = vec![None; self.sent as usize];
        for (&seq, &ms) in self.seqs.iter().zip(&self.rtt_ms) {
            if let Some(slot) = series.get_mut(seq as usize) {
                *slot = Some(ms);
            }
        }
        let series: Vec<String> = series
            .iter()
            .map(|ms| ms.map_or("null".into(), |ms| format!("{ms:.2}")))
            .collect();
        format!("[{}]", series.join(","))
    }

    pub fn spread(&self) -> Spread {
        Spread::of(&self.rtt_ms)
    }

    /// `p50 … ms, p99 … ms (N of M lost)`.
    pub fn text(&self) -> String {
        format!(
            "{} ({} of {} lost)",
            self.spread().text(),
            self.lost(),
            self.sent
        )
    }

    pub fn json(&self) -> String {
        let mean = (!self.rtt_ms.is_empty())
            .then(|| self.rtt_ms.iter().sum::<f64>() / self.rtt_ms.len() as f64);
        format!(
            "{{\"sent\":{},\"lost\":{},{},\"mean_ms\":{}}}",
            self.sent,
            self.lost(),
            self.spread().json_fields(),
            json_ms(mean)
        )
    }
}

/// Sends `count` echo datagrams of `size` bytes through `socket` (connected to the echoing
/// target, or the tunnel in front of it), one every `interval`, and times each reply; a
/// reply that has not come 1 s after the last datagram was sent is lost.
pub fn ping(socket: &UdpSocket, count: u64, interval: Duration, size: usize) -> io::Result<Pings> {
    // Replies to anything sent before (an earlier series, `wait_echo`) carry another run.
    static SERIES: AtomicU8 = AtomicU8::new(0);
    let run = SERIES.fetch_add(1, Ordering::Relaxed) % 255 + 1;
    large_buffers(socket);
    let receiver = socket.try_clone()?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let replies = thread::spawn(move || collect_replies(&receiver, run, &stop));
    set_timer_slack_1ns();
    let mut buf = vec![0u8; size.max(STAMP)];
    let start = Instant::now();
    for seq in 0..count {
        thread::sleep((start + interval * seq as u32).saturating_duration_since(Instant::now()));
        let stamp = Stamp {
            mode: mode::ECHO,
            run,
            seq,
            sent_ns: now_ns(),
        };
        stamp.write(&mut buf);
        let _ = socket.send(&buf);
    }
    thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let (rtt_ms, seqs) = replies
        .join()
        .map_err(|_| io::Error::other("the reply thread panicked"))?;
    Ok(Pings {
        sent: count,
        rtt_ms,
        seqs,
    })
}

fn collect_replies(socket: &UdpSocket, run: u8, stop: &AtomicBool) -> (Vec<f64>, Vec<u64>) {
    let mut buf = vec![0u8; 65_536];
    let (mut rtt_ms, mut seqs) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let Ok(len) = socket.recv(&mut buf) else {
            continue;
        };
        let ours = |s: &Stamp| s.mode == mode::ECHO && s.run == run;
        if let Some(stamp) = Stamp::read(&buf[..len]).filter(ours) {
            rtt_ms.push(now_ns().saturating_sub(stamp.sent_ns) as f64 / 1e6);
            seqs.push(stamp.seq);
        }
    }
    (rtt_ms, seqs)
}

/// Sends an echo datagram (of run 0) through `socket` every 50 ms until one comes back (the
/// path is up), for up to `patience`.
pub fn wait_echo(socket: &UdpSocket, patience: Duration) -> Result<(), String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + patience;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        Stamp {
            mode: mode::ECHO,
            run: 0,
            seq: u64::MAX,
            sent_ns: now_ns(),
        }
        .write(&mut buf);
        let sent = socket.send(&buf[..STAMP]);
        match sent.and_then(|_| socket.recv(&mut buf)) {
            Ok(_) => return socket.set_read_timeout(None).map_err(|e| e.to_string()),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(format!("no echo within {patience:?}: {last_error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::target::Target;

    #[test]
    fn a_series_times_every_echo_and_ignores_earlier_replies() {
        let target = Target::start(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(target.addr()).unwrap();
        wait_echo(&socket, Duration::from_secs(5)).unwrap();
        // A stray echo of wait_echo's is waiting in the socket: not a sample of the series.
        let mut stray = [0u8; STAMP];
        Stamp {
            mode: mode::ECHO,
            run: 0,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut stray);
        socket.send(&stray).unwrap();
        let pings = ping(&socket, 5, Duration::from_millis(2), 64).unwrap();
        assert_eq!((pings.sent, pings.lost(), pings.rtt_ms.len()), (5, 0, 5));
        let mut seqs = pings.seqs.clone();
        seqs.sort_unstable();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert_eq!(pings.series_json().matches(',').count(), 4);
        assert!(
            pings.rtt_ms.iter().all(|&ms| ms > 0.0 && ms < 1000.0),
            "{pings:?}"
        );
        let mut all = Pings::default();
        all.extend(pings.clone());
        all.extend(pings);
        assert_eq!((all.sent, all.rtt_ms.len()), (10, 10));
        assert!(all.text().ends_with("(0 of 10 lost)"), "{}", all.text());
    }
}
