//! Choosing a TCP congestion control, per namespace or per socket.
//!
//! Inside a network namespace other than the root one, the kernel lets the namespace's default
//! (`net.ipv4.tcp_congestion_control`) be only one of the host-wide
//! `net.ipv4.tcp_allowed_congestion_control` list (here `reno bbr`, so not cubic); a socket
//! of a process with CAP_NET_ADMIN, however, may pick any available one with the
//! TCP_CONGESTION option. Benchmarks that need cubic set it on their sockets.

use std::os::fd::AsRawFd;

use super::{Error, netns};

const SYSCTL_DEFAULT: &str = "net.ipv4.tcp_congestion_control";
const ALLOWED_LIST: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// Makes `name` the default congestion control of namespace `ns`, or explains why it cannot.
pub fn set_default(ns: &str, name: &str) -> Result<(), Error> {
    let allowed = std::fs::read_to_string(ALLOWED_LIST).unwrap_or_default();
    if !allowed.split_whitespace().any(|cc| cc == name) {
        return Err(Error(format!(
            "a namespace can default only to a congestion control listed in \
             net.ipv4.tcp_allowed_congestion_control ({}), not {name}; set it per socket \
             (linkem::tcp::set_on_socket) or add it to that host-wide list",
            allowed.trim()
        )));
    }
    netns::set_sysctl(ns, SYSCTL_DEFAULT, name)
}

/// Sets the congestion control of one TCP socket (e.g. `cubic`); needs CAP_NET_ADMIN for one
/// that is not in the allowed list.
pub fn set_on_socket(socket: &impl AsRawFd, name: &str) -> Result<(), Error> {
    // SAFETY: the option value is a valid buffer of the given length for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error(format!("setting TCP congestion control {name}: {e}")));
    }
    Ok(())
}

/// The congestion control a TCP socket uses.
pub fn on_socket(socket: &impl AsRawFd) -> Result<String, Error> {
    let mut name = [0u8; 32];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: `name` and `len` are valid for writing; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error(format!("reading TCP congestion control: {e}")));
    }
    let text = &name[..(len as usize).min(name.len())];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    Ok(String::from_utf8_lossy(&text[..end]).into_owned())
}
