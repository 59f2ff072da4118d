//! The three secrets of a server endpoint, and where they come from (SPEC §9, §12):
//!
//! - the stateless-reset key: a stateless reset for a connection ID is an HMAC of it under
//!   this key, so a server that has lost a connection (a restart, another instance) can still
//!   end it at once for the client;
//! - the CID key, which checks the connection IDs the server issues ([`super::cid`]);
//! - the Retry token key, which seals the address-validation tokens of QUIC Retry.
//!
//! From a cluster key all three are derived, the same on every instance. Otherwise the reset
//! key is the state directory's (kept across restarts), the CID key is derived from it, and
//! Retry tokens are sealed with a key of this process (a token lives 15 s).

use std::fmt;
use std::sync::Arc;

use ring::error::Unspecified;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use super::cluster_key::{ClusterKey, Label};

/// Where a server's keys come from.
#[derive(Clone, Default)]
pub enum KeySource {
    /// Keys of this process alone: nothing survives a restart (the library's tests).
    #[default]
    Random,
    /// The stateless-reset key kept in the state directory (`tls::load_or_create_reset_key`).
    StateDir(Vec<u8>),
    /// The cluster key every instance of the service shares (`--cluster-key-file`).
    Cluster(ClusterKey),
}

impl fmt::Debug for KeySource {
    /// Names the source, never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Random => "Random",
            KeySource::StateDir(_) => "StateDir",
            KeySource::Cluster(_) => "Cluster",
        })
    }
}

/// What the CID key is derived from when the reset key comes from the state directory; kept
/// as it was, so a restarted server still recognises the IDs its predecessor issued.
const STATE_DIR_CID_LABEL: &[u8] = b"quictun connection id key";

/// A server endpoint's keys.
pub struct EndpointKeys {
    pub reset: hmac::Key,
    pub cid: hmac::Key,
    /// quinn seals each token with a key expanded from this PRK and the token's own random
    /// bytes.
    pub retry: Arc<hkdf::Prk>,
}

impl EndpointKeys {
    /// The keys `source` gives; `Err` only when the OS has no random bytes to give.
    pub fn new(source: &KeySource) -> Result<EndpointKeys, Unspecified> {
        match source {
            KeySource::Random => {
                let reset: [u8; 32] = random()?;
                EndpointKeys::from_state_dir(&reset)
            }
            KeySource::StateDir(reset) => EndpointKeys::from_state_dir(reset),
            KeySource::Cluster(key) => Ok(EndpointKeys::from_cluster(key)),
        }
    }

    fn from_state_dir(reset: &[u8]) -> Result<EndpointKeys, Unspecified> {
        let reset = hmac::Key::new(hmac::HMAC_SHA256, reset);
        let cid = hmac::sign(&reset, STATE_DIR_CID_LABEL);
        let retry: [u8; 32] = random()?;
        Ok(EndpointKeys {
            cid: hmac::Key::new(hmac::HMAC_SHA256, cid.as_ref()),
            reset,
            retry: retry_key(&retry),
        })
    }

    fn from_cluster(key: &ClusterKey) -> EndpointKeys {
        EndpointKeys {
            reset: hmac::Key::new(hmac::HMAC_SHA256, &key.derive(Label::Reset)),
            cid: hmac::Key::new(hmac::HMAC_SHA256, &key.derive(Label::Cid)),
            retry: retry_key(&key.derive(Label::Retry)),
        }
    }
}

/// The Retry token key as quinn's own default makes it from random bytes
/// (`ServerConfig::with_crypto`): HKDF-Extract with an empty salt.
fn retry_key(secret: &[u8]) -> Arc<hkdf::Prk> {
    Arc::new(hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret))
}

fn random<const N: usize>() -> Result<[u8; N], Unspecified> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::crypto::HandshakeTokenKey;

    fn sealed_and_opened(sealer: &EndpointKeys, opener: &EndpointKeys) -> bool {
        let random = [7u8; 32];
        let mut token = b"token".to_vec();
        let seal = sealer.retry.aead_from_hkdf(&random);
        seal.seal(&mut token, &[]).unwrap();
        let open = opener.retry.aead_from_hkdf(&random);
        open.open(&mut token, &[]).is_ok()
    }

    #[test]
    fn instances_with_one_cluster_key_share_every_key() {
        let key = ClusterKey::generate().unwrap();
        let a = EndpointKeys::new(&KeySource::Cluster(key.clone())).unwrap();
        let b = EndpointKeys::new(&KeySource::Cluster(key)).unwrap();
        let other =
            EndpointKeys::new(&KeySource::Cluster(ClusterKey::generate().unwrap())).unwrap();
        let tag = |k: &hmac::Key| hmac::sign(k, b"cid").as_ref().to_vec();
        assert_eq!(tag(&a.reset), tag(&b.reset));
        assert_eq!(tag(&a.cid), tag(&b.cid));
        assert_ne!(tag(&a.reset), tag(&a.cid));
        assert_ne!(tag(&a.reset), tag(&other.reset));
        assert!(sealed_and_opened(&a, &b));
        assert!(!sealed_and_opened(&a, &other));
    }

    #[test]
    fn a_state_dir_key_keeps_reset_and_cid_keys_across_restarts_but_not_retry() {
        let reset = vec![5u8; 64];
        let first = EndpointKeys::new(&KeySource::StateDir(reset.clone())).unwrap();
        let restarted = EndpointKeys::new(&KeySource::StateDir(reset)).unwrap();
        let tag = |k: &hmac::Key| hmac::sign(k, b"x").as_ref().to_vec();
        assert_eq!(tag(&first.reset), tag(&restarted.reset));
        assert_eq!(tag(&first.cid), tag(&restarted.cid));
        assert!(!sealed_and_opened(&first, &restarted));
        assert_eq!(format!("{:?}", KeySource::StateDir(vec![1, 2])), "StateDir");
    }
}
