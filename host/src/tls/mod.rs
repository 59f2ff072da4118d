//! TLS for both endpoints: the server's identity, the client's verification, ALPN.
//!
//! One crypto provider, ring, is named explicitly everywhere: rustls then never has to guess a
//! process-wide default.

use std::path::PathBuf;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::wire::{ALPN_LEGACY, ALPN_V2};
use known_hosts::KnownHosts;

mod identity;
mod known_hosts;
mod small_rsa;
mod state;

pub use identity::{
    Fingerprint, Identity, IdentityError, default_state_dir, load_or_create_reset_key, load_roots,
};
pub use known_hosts::KnownHostsError;
pub use state::prepare_state_dir;

/// The process's crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which client certificates the server asks for (mutual TLS).
#[derive(Debug, Clone, Default)]
pub enum ClientAuth {
    /// None: any client may connect.
    #[default]
    Off,
    /// Every client must show a certificate signed by one of these roots.
    Required(rustls::RootCertStore),
    /// A client may connect without a certificate; one it shows must be signed by one of these
    /// roots.
    Optional(rustls::RootCertStore),
}

/// The server's QUIC crypto: TLS 1.3 with `identity`, offering our ALPN, asking clients for
/// certificates as `client_auth` says.
pub fn server_crypto(
    identity: Identity,
    client_auth: ClientAuth,
) -> Result<Arc<QuicServerConfig>, rustls::Error> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let (roots, optional) = match client_auth {
        ClientAuth::Off => (None, false),
        ClientAuth::Required(roots) => (Some(roots), false),
        ClientAuth::Optional(roots) => (Some(roots), true),
    };
    let builder = match roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match optional {
                true => verifier.allow_unauthenticated(),
                false => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(identity.chain, identity.key)?;
    // Ours first; the original's for its clients in mixed deployments.
    config.alpn_protocols = vec![ALPN_V2.to_vec(), ALPN_LEGACY.to_vec()];
    let quic = QuicServerConfig::try_from(config)
        .map_err(|error| rustls::Error::General(error.to_string()))?;
    Ok(Arc::new(quic))
}

/// The SHA-256 fingerprint of the certificate the peer of `connection` showed.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<Fingerprint> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(Fingerprint::of)
}

/// How the client checks the server's certificate.
#[derive(Debug, Clone)]
pub enum Verification {
    /// No check at all (`--insecure-skip-verify`).
    Insecure,
    /// The certificate must have this SHA-256 fingerprint (`--server-cert-fingerprint`).
    Pinned(Fingerprint),
    /// Trust on first use: the first certificate seen for `endpoint` is recorded in the
    /// known-hosts file once the server proved it holds its key; a different one later is
    /// refused.
    FirstUse {
        known_hosts: PathBuf,
        endpoint: String,
    },
    /// The certificate must chain to one of these roots and name the server.
    Pki(rustls::RootCertStore),
}

impl Verification {
    /// The verification of the server written `endpoint`: trust on first use remembers each
    /// server under its own endpoint; the other checks apply to every server alike.
    pub fn for_endpoint(&self, endpoint: &str) -> Verification {
        match self {
            Verification::FirstUse { known_hosts, .. } => Verification::FirstUse {
                known_hosts: known_hosts.clone(),
                endpoint: endpoint.to_owned(),
            },
            other => other.clone(),
        }
    }
}

/// The client's QUIC crypto; with `identity`, the client presents it (mutual TLS).
pub fn client_crypto(
    verification: &Verification,
    identity: Option<Identity>,
) -> Result<Arc<QuicClientConfig>, rustls::Error> {
    // Ours first; the original's for its servers, which offer nothing else.
    client_crypto_offering(verification, identity, &[ALPN_V2, ALPN_LEGACY])
}

/// The client's QUIC crypto, offering the protocols `alpn` in order of preference.
pub fn client_crypto_offering(
    verification: &Verification,
    identity: Option<Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<QuicClientConfig>, rustls::Error> {
    let provider = provider();
    let check = |rule| {
        Arc::new(CheckFingerprint {
            provider: provider.clone(),
            rule,
        })
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::Insecure => check(Rule::Any),
        Verification::Pinned(fingerprint) => check(Rule::Pinned(*fingerprint)),
        Verification::FirstUse {
            known_hosts,
            endpoint,
        } => check(Rule::FirstUse {
            known_hosts: KnownHosts::new(known_hosts.clone()),
            endpoint: endpoint.clone(),
        }),
        Verification::Pki(roots) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let quic = QuicClientConfig::try_from(config)
        .map_err(|error| rustls::Error::General(error.to_string()))?;
    Ok(Arc::new(quic))
}

/// Starts the text of a refusal by [`CheckFingerprint`], however TLS and QUIC wrap it.
const REFUSAL: &str = "its certificate is refused: ";

/// Why this client refused the server's certificate by its fingerprint (a pin or a known
/// host that does not match), found in the reason of the failed handshake `reason`:
/// `its certificate is refused: …`, saying what was seen, what was expected and what to do,
/// without TLS's wrapping around it. `None` for any other failure.
pub fn refusal_in(reason: &str) -> Option<&str> {
    reason.find(REFUSAL).map(|start| &reason[start..])
}

/// Checks the server's certificate by its fingerprint. Unless nothing is checked
/// (`--insecure-skip-verify`), the handshake signature is checked too, so the peer holds the
/// key of the certificate it showed.
#[derive(Debug)]
struct CheckFingerprint {
    provider: Arc<CryptoProvider>,
    rule: Rule,
}

#[derive(Debug)]
enum Rule {
    Any,
    Pinned(Fingerprint),
    FirstUse {
        known_hosts: KnownHosts,
        endpoint: String,
    },
}

impl CheckFingerprint {
    /// The check of the certificate alone, before the handshake shows whether the peer holds
    /// its key. Trust on first use only refuses a change here: it records nothing yet.
    fn check(&self, seen: Fingerprint) -> Result<(), String> {
        match &self.rule {
            Rule::Any => Ok(()),
            Rule::Pinned(pinned) if *pinned == seen => Ok(()),
            Rule::Pinned(pinned) => Err(format!(
                "seen {seen}, expected {pinned} (--server-cert-fingerprint); if the server's \
                 certificate was replaced on purpose, check that the server logged \
                 fingerprint={seen} at start (\"server certificate\"), then update \
                 --server-cert-fingerprint to it"
            )),
            Rule::FirstUse {
                known_hosts,
                endpoint,
            } => known_hosts.check(endpoint, seen).map_err(|e| e.to_string()),
        }
    }

    /// Whether `dss` is `cert`'s key's signature of `message`.
    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let checked = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        if checked.is_ok() || !small_rsa::handles(dss.scheme) {
            return checked;
        }
        // The original's servers default to 1024-bit RSA keys, which ring refuses: a pinned
        // or remembered certificate of that kind is still bound to its key.
        match rustls::crypto::verify_tls13_signature(message, cert, dss, &small_rsa::ALGORITHMS) {
            Ok(valid) => {
                tracing::warn!(
                    "the server's RSA key is shorter than 2048 bits, which is weak: give the \
                     server a proper certificate (--cert-file/--key-file)"
                );
                Ok(valid)
            }
            Err(_) => checked,
        }
    }
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
        self.check(Fingerprint::of(end_entity))
            .map(|()| ServerCertVerified::assertion())
            .map_err(|reason| rustls::Error::General(format!("{REFUSAL}{reason}")))
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
        // With no check at all there is nothing to bind the signature to.
        if matches!(self.rule, Rule::Any) {
            return Ok(HandshakeSignatureValid::assertion());
        }
        let valid = self.check_signature(message, cert, dss)?;
        // Only now is the certificate known to be the peer's own: a first use is recorded
        // here, never before, so an impostor that cannot sign leaves no trace.
        if let Rule::FirstUse {
            known_hosts,
            endpoint,
        } = &self.rule
        {
            known_hosts
                .remember(endpoint, Fingerprint::of(cert))
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
