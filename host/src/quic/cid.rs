//! The connection IDs a server issues (SPEC §12; docs/SCALING.md, "Connection IDs").
//!
//! Every ID is 8 bytes, in the spirit of the IETF QUIC-LB draft's plaintext format, so that a
//! CID-aware load balancer can send a connection's packets to the instance that holds it,
//! even after the client's address changed:
//!
//! | bytes | value |
//! |---|---|
//! | 0 | `0x00`: config rotation 0 |
//! | 1 | the server id (`--server-id`); a random byte without one |
//! | 2–5 | random |
//! | 6–7 | the first 2 bytes of HMAC-SHA256(CID key, bytes 0–5) |
//!
//! quinn asks [`ServerCids::validate`] whether a packet for a connection it does not hold
//! carries an ID of ours: if so it answers with a stateless reset, if not it drops the packet
//! without a word. The check ignores byte 1, so instances sharing the CID key (a cluster key)
//! reset each other's connections.

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of every connection ID.
pub const CID_LEN: usize = 8;
/// Byte 0: config rotation 0 (the top three bits), nothing else.
const ROTATION: u8 = 0x00;

/// Issues and recognises the server's connection IDs.
pub struct ServerCids {
    key: hmac::Key,
    server_id: Option<u8>,
    rng: SystemRandom,
    /// Counts IDs made without the OS's generator (see [`ServerCids::random`]).
    fallback: u64,
}

impl ServerCids {
    /// IDs checked with `key`, carrying `server_id` (a random byte in its place when `None`).
    pub fn new(key: hmac::Key, server_id: Option<u8>) -> ServerCids {
        ServerCids {
            key,
            server_id,
            rng: SystemRandom::new(),
            fallback: 0,
        }
    }

    /// Random bytes. The OS's generator does not fail on a system ring supports once it is
    /// booted; should it, a counter under the secret key still gives bytes no observer can
    /// link or predict, where quinn's own generators would panic.
    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        if self.rng.fill(&mut bytes).is_err() {
            self.fallback += 1;
            let tag = hmac::sign(&self.key, &self.fallback.to_be_bytes());
            bytes.copy_from_slice(&tag.as_ref()[..N]);
        }
        bytes
    }
}

/// The check bytes of an ID whose first six bytes are `head`.
pub fn check(key: &hmac::Key, head: &[u8]) -> [u8; 2] {
    let tag = hmac::sign(key, head);
    [tag.as_ref()[0], tag.as_ref()[1]]
}

impl ConnectionIdGenerator for ServerCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let [random_id, a, b, c, d] = self.random::<5>();
        let id = self.server_id.unwrap_or(random_id);
        let head = [ROTATION, id, a, b, c, d];
        let [x, y] = check(&self.key, &head);
        ConnectionId::new(&[ROTATION, id, a, b, c, d, x, y])
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let ours =
            cid.len() == CID_LEN && cid[0] == ROTATION && cid[6..] == check(&self.key, &cid[..6]);
        ours.then_some(()).ok_or(InvalidCid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    /// IDs are not retired on a timer: a balancer routes by byte 1, whatever the ID's age.
    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[byte; 32])
    }

    #[test]
    fn ids_carry_rotation_server_id_and_a_check_any_instance_with_the_key_accepts() {
        let mut seven = ServerCids::new(key(1), Some(7));
        let other_instance = ServerCids::new(key(1), Some(9));
        let stranger = ServerCids::new(key(2), Some(7));
        let ids: Vec<ConnectionId> = (0..200).map(|_| seven.generate_cid()).collect();
        for cid in &ids {
            assert_eq!(cid.len(), 8);
            assert_eq!(&cid[..2], &[0x00, 7]);
            assert_eq!(cid[6..], check(&key(1), &cid[..6]));
            assert!(seven.validate(cid).is_ok());
            assert!(other_instance.validate(cid).is_ok());
        }
        // A stranger's key fails the 2-byte check for all but about 1 in 65 536.
        let accepted = ids.iter().filter(|c| stranger.validate(c).is_ok()).count();
        assert!(accepted <= 1, "{accepted}");
        // The random bytes differ from one ID to the next.
        let distinct: std::collections::HashSet<_> = ids.iter().map(|c| c[2..6].to_vec()).collect();
        assert!(distinct.len() >= 199, "{}", distinct.len());
    }

    #[test]
    fn without_a_server_id_byte_1_is_random() {
        let mut cids = ServerCids::new(key(1), None);
        let bytes: std::collections::HashSet<u8> =
            (0..200).map(|_| cids.generate_cid()[1]).collect();
        assert!(bytes.len() > 50, "{bytes:?}");
    }

    #[test]
    fn foreign_ids_are_not_ours() {
        let cids = ServerCids::new(key(1), Some(3));
        let mut good = ServerCids::new(key(1), Some(3)).generate_cid().to_vec();
        assert!(cids.validate(&ConnectionId::new(&good)).is_ok());
        good[0] = 0x20; // another config rotation
        assert!(cids.validate(&ConnectionId::new(&good)).is_err());
        assert!(cids.validate(&ConnectionId::new(&[0u8; 4])).is_err());
        assert!(cids.validate(&ConnectionId::new(&[0u8; 12])).is_err());
        assert!(cids.validate(&ConnectionId::new(&[])).is_err());
    }
}
