//! What the measuring tools need from the processes they start: ending them, reading their
//! memory and CPU time, the whole machine's CPU time, a scratch directory, a free loopback
//! port.

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

/// utime + stime of this process alone (all its threads, none of its children), in seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given; zeroes are a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a plain system call on a local struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
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

/// The whole machine's CPU time so far, all cores added, in seconds (/proc/stat).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTimes {
    /// user, nice, system, irq and softirq: work done anywhere on a path's behalf — its
    /// processes, this tool's application threads, the kernel's packet processing.
    pub busy: f64,
    /// All of it: busy, idle, iowait and steal.
    pub total: f64,
}

impl MachineTimes {
    pub fn now() -> MachineTimes {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        MachineTimes::parse(stat.lines().next().unwrap_or_default())
    }

    /// The share of the machine that was busy between `earlier` and now (0 to 1).
    pub fn busy_share_since(&self, earlier: &MachineTimes) -> f64 {
        (self.busy - earlier.busy) / (self.total - earlier.total)
    }

    /// The `cpu` line of /proc/stat: `cpu user nice system idle iowait irq softirq steal ...`
    /// in clock ticks.
    fn parse(line: &str) -> MachineTimes {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let fields: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let sum =
            |indices: &[usize]| indices.iter().filter_map(|&i| fields.get(i)).sum::<f64>() / ticks;
        MachineTimes {
            busy: sum(&[0, 1, 2, 5, 6]),
            total: sum(&[0, 1, 2, 3, 4, 5, 6, 7]),
        }
    }
}

/// Busy CPU seconds of the whole machine so far ([`MachineTimes::busy`]).
pub fn machine_busy_seconds() -> f64 {
    MachineTimes::now().busy
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

/// Runs an endpoint (`quictun-server` or `quictun-client`, flags already given) with its
/// standard error in `dir/NAME.log` and its state in `dir/NAME`, logging warnings only.
pub fn spawn_endpoint(
    mut command: std::process::Command,
    dir: &TempDir,
    name: &str,
) -> Result<std::process::Child, String> {
    use std::process::Stdio;
    let log = dir.0.join(format!("{name}.log"));
    let log_file =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    command
        .args(["--log-level", "warn"])
        .arg("--state-dir")
        .arg(dir.0.join(name))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {} (cargo build --release --workspace): {e}",
                command.get_program().to_string_lossy()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_times_add_the_busy_and_all_fields() {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let times = MachineTimes::parse("cpu  10 1 5 100 4 2 3 7 0 0");
        assert_eq!(times.busy, 21.0 / ticks);
        assert_eq!(times.total, 132.0 / ticks);
        let later = MachineTimes::parse("cpu  20 1 5 110 4 2 3 7 0 0");
        assert!((later.busy_share_since(&times) - 0.5).abs() < 1e-9);
        assert_eq!(MachineTimes::parse("cpu"), MachineTimes::default());
    }
}
