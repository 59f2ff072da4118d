//! The UDP socket under a QUIC endpoint, with bursts kept within what one GSO write takes.
//!
//! quinn hands the socket a burst of up to ten equal packets as one write for the kernel to cut
//! (GSO), and never checks their total. The kernel takes at most 64 KiB in one write and fails
//! a larger one with EMSGSIZE, which quinn-udp does not report (that is how a too-large path
//! MTU probe is meant to fail): a burst of ten 8,972-byte packets on a jumbo-frame path, or of
//! 65,507-byte ones on loopback, would be lost whole. So a burst over 64 KiB goes as several
//! writes of as many whole packets as fit, and packets of any size keep GSO's batching.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// The most one write may carry: an IPv4 datagram's largest payload.
const MAX_WRITE: usize = 65_507;

/// A socket whose writes never exceed [`MAX_WRITE`].
pub struct WholeWrites(Arc<dyn AsyncUdpSocket>);

impl WholeWrites {
    /// `socket`, made ready for `runtime` and wrapped.
    pub fn wrap(
        socket: std::net::UdpSocket,
        runtime: &dyn Runtime,
    ) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(WholeWrites(runtime.wrap_udp_socket(socket)?)))
    }
}

impl fmt::Debug for WholeWrites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WholeWrites").field(&self.0).finish()
    }
}

impl AsyncUdpSocket for WholeWrites {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(size) = transmit.segment_size else {
            return self.0.try_send(transmit);
        };
        if transmit.contents.len() <= MAX_WRITE {
            return self.0.try_send(transmit);
        }
        let per_write = (MAX_WRITE / size).max(1) * size;
        for (i, part) in transmit.contents.chunks(per_write).enumerate() {
            let sent = self.0.try_send(&Transmit {
                contents: part,
                segment_size: (part.len() > size).then_some(size),
                ..*transmit
            });
            match sent {
                Ok(()) => {}
                // Nothing written yet: quinn waits for the socket and offers the burst again.
                Err(error) if i == 0 => return Err(error),
                // Part of the burst is out; the rest is lost like any dropped packet, and
                // recovered as one (offering it again would repeat the part already sent).
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    use quinn::TokioRuntime;

    use super::*;

    /// A burst of ten 8,972-byte packets (jumbo frames) arrives whole, as ten datagrams of
    /// that size, where one write of all of them would fail.
    #[tokio::test]
    async fn a_burst_over_64_kib_arrives_as_its_packets() {
        let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let socket = WholeWrites::wrap(sender, &TokioRuntime).unwrap();
        let size = 8_972;
        let burst: Vec<u8> = (0..10 * size).map(|i| (i / size) as u8).collect();
        let mut poller = socket.clone().create_io_poller();
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
            .await
            .unwrap();
        socket
            .try_send(&Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents: &burst,
                segment_size: Some(size),
                src_ip: None,
            })
            .unwrap();
        let mut buf = vec![0; 65_536];
        for packet in 0..10u8 {
            let len = receiver.recv(&mut buf).unwrap();
            assert_eq!(len, size);
            assert!(buf[..len].iter().all(|&b| b == packet), "packet {packet}");
        }
    }
}
