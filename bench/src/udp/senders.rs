//! The UDP suite's senders: one that keeps a bounded window of datagrams in flight (the
//! target's count of what arrived is the acknowledgement), one paced at a fixed rate. Both
//! send [`mode::SINK`] datagrams numbered from 0 within a run of the target.

use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use super::target::{STAMP, Stamp, Target, now_ns};
use crate::mode;

/// What a sender sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub datagrams: u64,
    pub seconds: f64,
    /// Sends the kernel refused (counted as sent: the datagram is lost).
    pub errors: u64,
    /// Times a window of datagrams had all been lost and the sender went on after
    /// [`STALL`] without an arrival.
    pub stalls: u64,
}

/// How long a windowed sender waits for an arrival before it takes the window as lost.
pub const STALL: Duration = Duration::from_millis(20);

/// Sends `payload`-byte sink datagrams of run `run` to `target` (through `socket`, connected
/// to the target or the tunnel in front of it) for `duration`, never more than `window`
/// beyond the highest one the target has received.
pub fn send_windowed(
    socket: &UdpSocket,
    target: &Target,
    (run, payload): (u8, usize),
    window: u64,
    duration: Duration,
) -> Sent {
    let mut buf = vec![0u8; payload.max(STAMP)];
    let mut sent = Sent::default();
    // Sequence numbers below the floor were given up as lost.
    let mut floor = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let acknowledged = target.next_expected().max(floor);
        if sent.datagrams - acknowledged >= window {
            if !target.wait_past(acknowledged, STALL) {
                floor = sent.datagrams;
                sent.stalls += 1;
            }
            continue;
        }
        send_one(socket, &mut buf, run, &mut sent);
    }
    sent.seconds = start.elapsed().as_secs_f64();
    sent
}

/// Sends `payload`-byte sink datagrams of run `run` at `rate_bps` (payload bits per second)
/// for `duration`, each at its due time (late ones at once, in order); the stream's seconds
/// are `duration`.
pub fn send_paced(
    socket: &UdpSocket,
    (run, payload): (u8, usize),
    rate_bps: u64,
    duration: Duration,
) -> Sent {
    set_timer_slack_1ns();
    let interval = Duration::from_secs_f64(payload as f64 * 8.0 / rate_bps as f64);
    let mut buf = vec![0u8; payload.max(STAMP)];
    let mut sent = Sent::default();
    let start = Instant::now();
    loop {
        let offset = interval * sent.datagrams as u32;
        if offset >= duration {
            break;
        }
        thread::sleep((start + offset).saturating_duration_since(Instant::now()));
        send_one(socket, &mut buf, run, &mut sent);
    }
    sent.seconds = duration.as_secs_f64();
    sent
}

fn send_one(socket: &UdpSocket, buf: &mut [u8], run: u8, sent: &mut Sent) {
    Stamp {
        mode: mode::SINK,
        run,
        seq: sent.datagrams,
        sent_ns: now_ns(),
    }
    .write(buf);
    if socket.send(buf).is_err() {
        sent.errors += 1;
    }
    sent.datagrams += 1;
}

/// Lets this thread's sleeps end on time (the default slack is 50 µs).
pub fn set_timer_slack_1ns() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(to: std::net::SocketAddr) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(to).unwrap();
        socket
    }

    #[test]
    fn a_windowed_sender_delivers_everything_on_loopback() {
        let target = Target::start(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let socket = pair(target.addr());
        let run = target.begin_run(false);
        let sent = send_windowed(&socket, &target, (run, 64), 8, Duration::from_millis(100));
        thread::sleep(Duration::from_millis(200));
        let sunk = target.end_run();
        assert!(sent.datagrams > 8, "{sent:?}");
        assert_eq!((sunk.received, sent.stalls), (sent.datagrams, 0));
    }

    #[test]
    fn a_window_of_lost_datagrams_stalls_and_the_sender_goes_on() {
        let target = Target::start(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        // Nobody hands this socket's datagrams to the target: every window is lost.
        let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = pair(blackhole.local_addr().unwrap());
        let run = target.begin_run(false);
        let sent = send_windowed(&socket, &target, (run, 64), 4, STALL * 3 + STALL / 2);
        assert!((3..=4).contains(&sent.stalls), "{sent:?}");
        assert!(sent.datagrams <= 4 * (sent.stalls + 1), "{sent:?}");
    }

    #[test]
    fn a_paced_sender_keeps_its_rate() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = pair(sink.local_addr().unwrap());
        // 1 Mbit/s of 1,000-byte datagrams: 125 a second, 25 in 200 ms.
        let sent = send_paced(&socket, (1, 1000), 1_000_000, Duration::from_millis(200));
        assert_eq!(sent.datagrams, 25, "{sent:?}");
    }
}
