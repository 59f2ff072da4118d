//! What the measuring tools need from the processes they start: ending them, reading their
//! memory and CPU time, a scratch directory, a free loopback port.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Ends processes this tool started (by their own pid) and reaps them.
pub fn stop<const N: usize>(children: [&mut Child; N]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A field of /proc/PID/status in KiB, e.g. `status_kib(pid, "VmRSS:")`.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The resident memory of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// utime + stime of the processes and their descendants (sshd works in a child), in seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    with_descendants(pids)
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which ends with the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 2..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut all = pids.to_vec();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    all
}

/// A free port on 127.0.0.1 (UDP or TCP), as the OS hands it out.
pub fn free_port(udp: bool) -> Result<SocketAddr, String> {
    let addr = if udp {
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    } else {
        TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    };
    addr.map_err(|e| format!("no free port: {e}"))
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir, String> {
        TempDir::named("tunnel")
    }

    /// A new directory whose name holds `name`, unique in this process (several servers of
    /// one suite each get their own state directory).
    pub fn named(name: &str) -> Result<TempDir, String> {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("quictun-bench-{}-{n}-{name}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
