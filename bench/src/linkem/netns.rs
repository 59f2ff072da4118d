//! Network namespaces: creating and always removing them, and running code or commands inside
//! one.
//!
//! Namespaces are created with `ip netns add`, so they are named, visible to `ip netns exec`
//! and removable by name. Code runs inside one on a fresh thread that `setns`es into it (a
//! network namespace is a per-thread attribute, so the rest of the process is unaffected), and
//! sockets it creates stay in that namespace whichever thread uses them afterwards.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::Error;

/// Prefix of every namespace linkem creates; followed by the creating process's id.
pub const NAME_PREFIX: &str = "qtl-";

/// Where `ip netns` keeps the namespaces it names.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted when dropped (also while unwinding from a panic).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with a name unique to this process and call:
    /// `qtl-<pid>-<n>-<role>`.
    pub fn create_unique(role: &str) -> Result<NetNs, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(NetNs { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("linkem: could not remove network namespace: {e}");
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result. Sockets `f` creates
/// belong to `ns` and may be used from any thread afterwards. A panic in `f` is resumed here.
pub fn run_in<F, R>(ns: &str, f: F) -> Result<R, Error>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let handle = open_ns(ns)?;
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&handle).map_err(|e| Error(format!("entering namespace {ns}: {e}")))?;
                Ok(f())
            })
            .join()
    });
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A `Command` for `program` that will run inside namespace `ns` (like `ip netns exec`, minus
/// the remount of /sys, which the benchmarks do not need). Spawn it as usual.
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Result<Command, Error> {
    let handle = open_ns(ns)?;
    let mut command = Command::new(program);
    // SAFETY: the closure only makes the setns system call (async-signal-safe) on a file
    // descriptor opened before the fork; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || enter(&handle));
    }
    Ok(command)
}

/// Sets sysctl `key` (e.g. `net.ipv4.tcp_congestion_control`) to `value` inside `ns`; only
/// per-namespace keys (most of `net.*`) make sense.
pub fn set_sysctl(ns: &str, key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    run_in(ns, || std::fs::write(&path, value))?
        .map_err(|e| Error(format!("setting {key}={value} in namespace {ns}: {e}")))
}

/// Reads sysctl `key` inside `ns`, trimmed.
pub fn get_sysctl(ns: &str, key: &str) -> Result<String, Error> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    run_in(ns, || std::fs::read_to_string(&path))?
        .map(|v| v.trim().to_string())
        .map_err(|e| Error(format!("reading {key} in namespace {ns}: {e}")))
}

/// Removes namespaces left by linkem processes that no longer exist (killed before they could
/// clean up). Returns the names removed.
pub fn remove_stale() -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error(format!("listing {NETNS_DIR}: {e}"))),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ip(&["netns", "del", &name])?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Runs `ip` with `args`; an error carries the command and what `ip` printed.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error(format!("running ip {}: {e}", args.join(" "))))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error(format!(
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// The pid in a name `qtl-<pid>-...`, if the name is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn open_ns(ns: &str) -> Result<File, Error> {
    File::open(format!("{NETNS_DIR}/{ns}"))
        .map_err(|e| Error(format!("opening network namespace {ns}: {e}")))
}

/// Moves the calling thread into the namespace `handle` refers to.
fn enter(handle: &File) -> std::io::Result<()> {
    // SAFETY: plain system call on a valid, open file descriptor.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("qtl-1234-0-a"), Some(1234));
        assert_eq!(owner_pid("qtl-x-0-a"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }
}
