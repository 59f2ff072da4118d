//! RSA-PSS handshake signatures from keys of 1024 to 2047 bits, which ring refuses.
//!
//! The original's servers generate a 1024-bit RSA key by default. A client that pins such a
//! server's certificate (or remembers it on first use) still has to check that the server
//! holds the key, so these signatures are verified here with a pure-Rust RSA implementation.
//! Keys of 2048 bits and more never reach this code: ring verifies them, and a signature ring
//! rejected from such a key is not given a second chance. Only the TLS 1.3 handshake signature
//! uses this; certificate chains (`--ca-file`) are checked by ring alone.

use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pss::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rustls::SignatureScheme;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{
    AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm, alg_id,
};

/// The smallest RSA key accepted at all, and the first size ring takes over from us.
pub const MIN_BITS: usize = 1024;
const RING_MIN_BITS: usize = 2048;

#[derive(Debug, Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// RSASSA-PSS with MGF1 over the same hash and a salt as long as the hash (what TLS 1.3
/// requires of `rsa_pss_rsae_*`), for moduli of [`MIN_BITS`] up to 2047 bits.
#[derive(Debug)]
struct SmallRsaPss(Hash);

static PSS_SHA256: SmallRsaPss = SmallRsaPss(Hash::Sha256);
static PSS_SHA384: SmallRsaPss = SmallRsaPss(Hash::Sha384);
static PSS_SHA512: SmallRsaPss = SmallRsaPss(Hash::Sha512);

/// The handshake signature schemes this module verifies, for `verify_tls13_signature`.
pub static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[&PSS_SHA256, &PSS_SHA384, &PSS_SHA512],
    mapping: &[
        (SignatureScheme::RSA_PSS_SHA256, &[&PSS_SHA256]),
        (SignatureScheme::RSA_PSS_SHA384, &[&PSS_SHA384]),
        (SignatureScheme::RSA_PSS_SHA512, &[&PSS_SHA512]),
    ],
};

/// Whether `scheme` is one this module can verify.
pub fn handles(scheme: SignatureScheme) -> bool {
    ALGORITHMS.mapping.iter().any(|(s, _)| *s == scheme)
}

impl SignatureVerificationAlgorithm for SmallRsaPss {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        // The subjectPublicKey of an rsaEncryption key: PKCS#1 RSAPublicKey.
        let key = RsaPublicKey::from_pkcs1_der(public_key).map_err(|_| InvalidSignature)?;
        let bits = key.n().bits();
        if !(MIN_BITS..RING_MIN_BITS).contains(&bits) {
            return Err(InvalidSignature);
        }
        let signature = Signature::try_from(signature).map_err(|_| InvalidSignature)?;
        let verified = match self.0 {
            Hash::Sha256 => VerifyingKey::<sha2::Sha256>::new(key).verify(message, &signature),
            Hash::Sha384 => VerifyingKey::<sha2::Sha384>::new(key).verify(message, &signature),
            Hash::Sha512 => VerifyingKey::<sha2::Sha512>::new(key).verify(message, &signature),
        };
        verified.map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        match self.0 {
            Hash::Sha256 => alg_id::RSA_PSS_SHA256,
            Hash::Sha384 => alg_id::RSA_PSS_SHA384,
            Hash::Sha512 => alg_id::RSA_PSS_SHA512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    use rsa::signature::{RandomizedSigner, SignatureEncoding};

    fn key(name: &str) -> RsaPrivateKey {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name);
        RsaPrivateKey::read_pkcs8_pem_file(path).unwrap()
    }

    /// The PKCS#1 public key as a certificate carries it, and a PSS/SHA-256 signature.
    fn signed(key: &RsaPrivateKey, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let spki = key.to_public_key().to_public_key_der().unwrap();
        let spki = spki
            .decode_msg::<rsa::pkcs8::SubjectPublicKeyInfoRef>()
            .unwrap();
        let public = spki.subject_public_key.raw_bytes().to_vec();
        let signer = rsa::pss::BlindedSigningKey::<sha2::Sha256>::new(key.clone());
        let signature = signer.sign_with_rng(&mut rsa::rand_core::OsRng, message);
        (public, signature.to_vec())
    }

    #[test]
    fn a_1024_bit_signature_verifies_and_a_changed_message_does_not() {
        let (public, signature) = signed(&key("rsa1024-original.key"), b"handshake");
        assert!(
            PSS_SHA256
                .verify_signature(&public, b"handshake", &signature)
                .is_ok()
        );
        assert!(
            PSS_SHA256
                .verify_signature(&public, b"handshakE", &signature)
                .is_err()
        );
        // The hash is part of the scheme: a SHA-256 signature is no SHA-384 one.
        assert!(
            PSS_SHA384
                .verify_signature(&public, b"handshake", &signature)
                .is_err()
        );
    }

    #[test]
    fn keys_below_1024_bits_and_from_2048_bits_are_not_ours_to_accept() {
        let tiny = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 768).unwrap();
        let (public, signature) = signed(&tiny, b"handshake");
        assert!(
            PSS_SHA256
                .verify_signature(&public, b"handshake", &signature)
                .is_err()
        );
        let (public, signature) = signed(&key("rsa.key"), b"handshake");
        assert!(
            PSS_SHA256
                .verify_signature(&public, b"handshake", &signature)
                .is_err()
        );
    }
}
