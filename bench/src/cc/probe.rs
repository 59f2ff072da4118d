//! A ping through the emulated link alongside a flow: small UDP packets from namespace A are
//! echoed back by namespace B, so each sample crosses the A→B bottleneck queue the flow builds
//! (and the B→A direction its ACKs use). The median of the samples against the link's base
//! RTT shows how much queue a controller keeps.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::linkem::Link;

/// Time between probes: 50 per second is a few kbit/s, nothing next to the flow.
const INTERVAL: Duration = Duration::from_millis(20);
const ECHO_PORT: u16 = 7;

/// A running prober; [`RttProbe::finish`] stops it and returns the RTT samples.
pub struct RttProbe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Duration>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl RttProbe {
    pub fn start(link: &Link) -> Result<RttProbe, String> {
        let echo = link
            .run_in_b(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot bind the echo socket in namespace B: {e}"))?;
        let pinger = link
            .run_in_a(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot bind the probe socket in namespace A: {e}"))?;
        let to = SocketAddr::from((link.addr_b(), ECHO_PORT));
        for socket in [&echo, &pinger] {
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let epoch = Instant::now();
        let receiver = pinger.try_clone().map_err(|e| e.to_string())?;
        let threads = vec![
            spawn_loop(&stop, move || echo_once(&echo)),
            spawn_loop(&stop, move || {
                let sent = epoch.elapsed().as_nanos() as u64;
                let _ = pinger.send_to(&sent.to_be_bytes(), to);
                thread::sleep(INTERVAL);
            }),
            {
                let samples = samples.clone();
                spawn_loop(&stop, move || {
                    let mut buf = [0u8; 64];
                    if let Ok(8) = receiver.recv(&mut buf) {
                        let sent = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                        let now = epoch.elapsed().as_nanos() as u64;
                        let rtt = Duration::from_nanos(now.saturating_sub(sent));
                        samples.lock().unwrap_or_else(|p| p.into_inner()).push(rtt);
                    }
                })
            },
        ];
        Ok(RttProbe {
            stop,
            samples,
            threads,
        })
    }

    /// Stops probing; the samples in the order they arrived.
    pub fn finish(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for RttProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_loop(
    stop: &Arc<AtomicBool>,
    mut step: impl FnMut() + Send + 'static,
) -> thread::JoinHandle<()> {
    let stop = stop.clone();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            step();
        }
    })
}

fn echo_once(socket: &UdpSocket) {
    let mut buf = [0u8; 64];
    if let Ok((n, from)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(&buf[..n], from);
    }
}
