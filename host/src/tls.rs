//! TLS for both endpoints: the server's identity, the client's verification, ALPN.
//!
//! One crypto provider, ring, is named explicitly everywhere: rustls then never has to guess a
//! process-wide default.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::wire::ALPN_V2;

/// The process's crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256) for `names`.
    pub fn self_signed(names: &[&str]) -> Result<Identity, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names)?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Identity {
            chain: vec![certified.cert.der().clone()],
            key: key.into(),
        })
    }

    /// The SHA-256 fingerprint of the leaf certificate.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.chain.first().map(Fingerprint::of)
    }
}

/// The server's QUIC crypto: TLS 1.3 with `identity`, offering our ALPN.
pub fn server_crypto(identity: Identity) -> Result<Arc<QuicServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ALPN_V2.to_vec()];
    let quic = QuicServerConfig::try_from(config)
        .map_err(|error| rustls::Error::General(error.to_string()))?;
    Ok(Arc::new(quic))
}

/// How the client checks the server's certificate.
#[derive(Debug, Clone)]
pub enum Verification {
    /// No check at all (`--insecure-skip-verify`).
    Insecure,
    /// The certificate must have this SHA-256 fingerprint (`--server-cert-fingerprint`).
    Pinned(Fingerprint),
}

/// A certificate's SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    /// Parses `sha256:` and 64 hex digits; colons and upper case are accepted.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{value:?} is not a fingerprint (expected sha256: and 64 hex digits)");
        let hex = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256:"))
            .map(|_| &value[7..]);
        let digits: Vec<u8> = hex
            .ok_or_else(bad)?
            .bytes()
            .filter(|&b| b != b':')
            .collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// The client's QUIC crypto.
pub fn client_crypto(verification: &Verification) -> Result<Arc<QuicClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = match verification {
        Verification::Insecure => Arc::new(CheckFingerprint {
            provider: provider.clone(),
            pinned: None,
        }),
        Verification::Pinned(fingerprint) => Arc::new(CheckFingerprint {
            provider: provider.clone(),
            pinned: Some(*fingerprint),
        }),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_V2.to_vec()];
    let quic = QuicClientConfig::try_from(config)
        .map_err(|error| rustls::Error::General(error.to_string()))?;
    Ok(Arc::new(quic))
}

/// Trusts a certificate with the pinned fingerprint, or any certificate when none is pinned.
/// The handshake signature is checked either way, so the peer holds the key of the
/// certificate it showed.
#[derive(Debug)]
struct CheckFingerprint {
    provider: Arc<CryptoProvider>,
    pinned: Option<Fingerprint>,
}

impl ServerCertVerifier for CheckFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pinned {
            Some(pinned) if Fingerprint::of(end_entity) != pinned => {
                Err(rustls::Error::General(format!(
                    "server certificate {} does not match the pinned {pinned}",
                    Fingerprint::of(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_forms() {
        let lower = format!("sha256:{}", "ab".repeat(32));
        let parsed: Fingerprint = lower.parse().unwrap();
        assert_eq!(parsed.to_string(), lower);
        let colons = format!("SHA256:{}", vec!["AB"; 32].join(":"));
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), parsed);
        for bad in [
            "",
            "sha256:",
            "md5:ab",
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}", "zz".repeat(32)),
            "sha256:é",
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn self_signed_identity_has_a_fingerprint() {
        let identity = Identity::self_signed(&["localhost"]).unwrap();
        let fingerprint = identity.fingerprint().unwrap();
        assert_eq!(fingerprint, Fingerprint::of(&identity.chain[0]));
        assert_eq!(fingerprint.to_string().len(), 7 + 64);
    }
}
