//! TUN devices: opening one in the calling thread's network namespace and configuring it.
//!
//! The device is a plain layer-3 TUN without packet-information header (`IFF_NO_PI`), so each
//! read or write is exactly one IP packet. It is not persistent: it disappears when its file
//! is closed.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::Error;
use super::netns::ip;

/// Creates TUN device `name` in the calling thread's network namespace and returns its
/// non-blocking file (reads give packets the kernel sends out of the device; writes inject
/// packets as if received on it).
pub fn open_tun(name: &str) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| Error(format!("opening /dev/net/tun: {e}")))?;
    let mut request = IfReq::new(name)?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out exactly
    // (name, flags, padding to the union's 24 bytes); the pointer is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error(format!("creating TUN device {name}: {e}")));
    }
    Ok(file)
}

/// Settings of one TUN device inside its namespace.
#[derive(Clone, Debug)]
pub struct TunSetup<'a> {
    pub ns: &'a str,
    pub dev: &'a str,
    /// Address with prefix, e.g. `198.18.0.1/30`.
    pub cidr: &'a str,
    pub mtu: u32,
    pub txqueuelen: u32,
}

/// Brings up loopback and the device in its namespace, with address, MTU and queue length.
/// IPv6 is switched off on the device first, so no router solicitations or multicast reports
/// appear in the link's counters.
pub fn configure(setup: &TunSetup) -> Result<(), Error> {
    let TunSetup { ns, dev, cidr, .. } = *setup;
    super::netns::set_sysctl(ns, &format!("net.ipv6.conf.{dev}.disable_ipv6"), "1")?;
    let (mtu, qlen) = (setup.mtu.to_string(), setup.txqueuelen.to_string());
    ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        "dev",
        dev,
        "mtu",
        &mtu,
        "txqueuelen",
        &qlen,
        "up",
    ])
}

/// `struct ifreq` as TUNSETIFF uses it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Result<IfReq, Error> {
        // The kernel needs room for the terminating NUL.
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(Error(format!(
                "TUN device name {name:?} must have 1 to {} bytes",
                libc::IFNAMSIZ - 1
            )));
        }
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _union_rest: [0; 22],
        };
        for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }

    #[test]
    fn ifreq_refuses_bad_names() {
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("a-name-far-too-long").is_err());
        assert!(IfReq::new("qtl0").is_ok());
    }
}
