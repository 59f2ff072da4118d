//! The forwarder: one thread per direction moving packets from one TUN device to the other
//! through that direction's link model.
//!
//! Each thread sleeps in `ppoll` on its input device (and a stop signal) with a timeout set to
//! the next arrival due at the far end, reads what is waiting in a batch, and writes out what
//! is due. Its timer slack is cut to 1 ns so the kernel wakes it on time (the default 50 µs
//! would blur a 100 Mbit/s link's 120 µs packet spacing); only the last few microseconds before
//! an arrival are spun, so an idle or slow link costs almost no CPU.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::Error;
use super::model::{Nanos, Path, PathConfig, WireLen};
use super::stats::{DirCounters, Outcome};

/// Packets read in one go before due packets are written out again.
const READ_BATCH: usize = 64;
/// Below this much time to the next arrival, poll without sleeping rather than risk a late
/// wake-up.
const SPIN: Nanos = 20_000;

/// The two forwarding threads; stopping (also on drop) wakes and joins them.
#[derive(Debug)]
pub(crate) struct Forwarder {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<()>>,
}

/// What one direction needs.
pub(crate) struct DirectionSetup {
    pub name: &'static str,
    pub input: Arc<File>,
    pub output: Arc<File>,
    pub path: PathConfig,
    pub counters: Arc<DirCounters>,
    /// Largest packet a device can hand over (its MTU): sizes the buffers.
    pub mtu: usize,
}

impl Forwarder {
    /// Starts one thread per direction. If a thread cannot be started, those already running
    /// are stopped before the error is returned.
    pub(crate) fn start(
        directions: Vec<DirectionSetup>,
        epoch: Instant,
    ) -> Result<Forwarder, Error> {
        let mut forwarder = Forwarder {
            stop: Arc::new(StopSignal::new()?),
            threads: Vec::new(),
        };
        for setup in directions {
            let worker = Worker::new(setup, epoch, Arc::clone(&forwarder.stop));
            let name = format!("linkem-{}", worker.name);
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker.run())
                .map_err(|e| Error(format!("starting thread {name}: {e}")))?;
            forwarder.threads.push(thread);
        }
        Ok(forwarder)
    }

    /// Stops both threads and waits for them.
    pub(crate) fn stop(&mut self) {
        self.stop.raise();
        for thread in self.threads.drain(..) {
            // A forwarder thread has no panicking paths; if one did panic, its message was
            // already printed and there is nothing to add.
            let _ = thread.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An eventfd that becomes readable, for good, once raised: every thread polling it wakes.
#[derive(Debug)]
struct StopSignal(OwnedFd);

impl StopSignal {
    fn new() -> Result<StopSignal, Error> {
        // SAFETY: plain system call; the returned descriptor is checked before being owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error(format!("creating eventfd: {e}")));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(StopSignal(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn raise(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to an eventfd. It can only fail if the
        // counter would overflow, which a few raises cannot cause.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// One IP packet in a reusable buffer.
struct Packet {
    data: Box<[u8]>,
    len: usize,
}

impl WireLen for Packet {
    fn wire_len(&self) -> usize {
        self.len
    }
}

/// What woke the thread.
enum Wake {
    Input,
    Timeout,
    Stop,
}

/// The state of one direction's thread.
struct Worker {
    name: &'static str,
    input: Arc<File>,
    output: Arc<File>,
    path: Path<Packet>,
    counters: Arc<DirCounters>,
    /// Buffers not in use; grows to the most packets held at once, which the path bounds.
    free: Vec<Packet>,
    /// Packets the path dropped at random, returned to `free` after each step.
    lost: Vec<Packet>,
    buffer_size: usize,
    epoch: Instant,
    stop: Arc<StopSignal>,
}

impl Worker {
    fn new(setup: DirectionSetup, epoch: Instant, stop: Arc<StopSignal>) -> Worker {
        Worker {
            name: setup.name,
            input: setup.input,
            output: setup.output,
            path: Path::new(&setup.path, Arc::clone(&setup.counters)),
            counters: setup.counters,
            free: Vec::new(),
            lost: Vec::new(),
            // Headroom over the MTU: a packet that did not fit would be cut short silently.
            buffer_size: setup.mtu + 256,
            epoch,
            stop,
        }
    }

    fn run(mut self) {
        set_timer_slack_1ns();
        loop {
            let now = self.now();
            self.path.advance(now, &mut self.lost);
            self.free.append(&mut self.lost);
            self.deliver_due(now);
            match self.wait(self.timeout()) {
                Ok(Wake::Stop) => return,
                Ok(Wake::Timeout) => {}
                Ok(Wake::Input) => {
                    if let Err(e) = self.read_batch() {
                        eprintln!("linkem: {} stopped: reading its TUN device: {e}", self.name);
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("linkem: {} stopped: ppoll: {e}", self.name);
                    return;
                }
            }
        }
    }

    fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }

    /// How long to sleep: until the next arrival (zero when it is about to be due), or
    /// indefinitely when the link is empty.
    fn timeout(&self) -> Option<Nanos> {
        let next = self.path.next_event()?;
        let left = next.saturating_sub(self.now());
        Some(if left <= SPIN { 0 } else { left })
    }

    /// Writes every packet due by `now` to the output device.
    fn deliver_due(&mut self, now: Nanos) {
        while let Some(packet) = self.path.pop_due(now) {
            let bytes = &packet.data[..packet.len];
            let outcome = match (&*self.output).write(bytes) {
                Ok(n) if n == packet.len => Outcome::Forwarded,
                _ => Outcome::WriteFailed,
            };
            self.counters.add(outcome, packet.len);
            self.free.push(packet);
        }
    }

    /// Reads up to `READ_BATCH` waiting packets into the link. An error other than "nothing
    /// more to read" means the device is gone.
    fn read_batch(&mut self) -> std::io::Result<()> {
        for _ in 0..READ_BATCH {
            let mut packet = self.free.pop().unwrap_or_else(|| Packet {
                data: vec![0; self.buffer_size].into_boxed_slice(),
                len: 0,
            });
            match (&*self.input).read(&mut packet.data) {
                Ok(len) => {
                    packet.len = len;
                    let now = self.now();
                    if let Some(refused) = self.path.offer(now, packet, &mut self.lost) {
                        self.free.push(refused);
                    }
                }
                Err(e) => {
                    self.free.push(packet);
                    return match e.kind() {
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(()),
                        _ => Err(e),
                    };
                }
            }
        }
        Ok(())
    }

    /// Sleeps until input is readable, the stop signal is raised or `timeout` passes.
    fn wait(&self, timeout: Option<Nanos>) -> std::io::Result<Wake> {
        let mut fds = [
            libc::pollfd {
                fd: self.stop.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.input.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let spec = timeout.map(|ns| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        });
        let spec_ptr = spec
            .as_ref()
            .map_or(std::ptr::null(), |s| s as *const libc::timespec);
        // SAFETY: `fds` and `spec` outlive the call; a null timeout means wait indefinitely
        // and a null signal mask leaves the mask unchanged.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                spec_ptr,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::Interrupted => Ok(Wake::Timeout),
                _ => Err(e),
            };
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Stop);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            return Ok(Wake::Input);
        }
        if fds[1].revents != 0 {
            return Err(std::io::Error::other(format!(
                "TUN device reported poll events {:#x}",
                fds[1].revents
            )));
        }
        Ok(Wake::Timeout)
    }
}

/// Lets the kernel wake this thread within 1 ns of the requested time instead of the default
/// 50 µs. Best effort: a failure only makes timing coarser.
fn set_timer_slack_1ns() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}
