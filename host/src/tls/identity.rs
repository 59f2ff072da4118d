//! Who an endpoint is and whom it trusts: certificates and keys from PEM files or kept in the
//! state directory (see [`super::state`] for how those files are kept), certificate
//! fingerprints, and CA bundles.

use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::state::{self, prepare_state_dir};

/// File names of the generated server identity inside the state directory.
/// The generated certificate and its key, in one PEM file.
const STATE_IDENTITY: &str = "server-identity.pem";
const STATE_RESET_KEY: &str = "reset-key";
const RESET_KEY_LEN: usize = 64;

/// Why an identity, a key or a CA bundle could not be had: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("no {what} in {}", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("bad CA certificate in {}: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{} is not a {RESET_KEY_LEN}-byte key", path.display())]
    BadResetKey { path: PathBuf },
    #[error("cannot generate {0}")]
    Generate(String),
    #[error("cannot create state directory {}: {source}", path.display())]
    StateDir { path: PathBuf, source: io::Error },
    #[error("state directory {} is not a directory", path.display())]
    StateDirNotADir { path: PathBuf },
    #[error("state directory {} belongs to uid {owner}, not to this user (uid {me}): give --state-dir a directory of your own", path.display())]
    StateDirOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("state directory {} may be written by group or others (mode {mode:o}), who could plant links in it: run chmod go-w {}", path.display(), path.display())]
    StateDirWritable { path: PathBuf, mode: u32 },
    #[error("{} is a symbolic link, and state files are never read or written through one: remove it", path.display())]
    Link { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Reads a PEM certificate chain and private key (PKCS#8, PKCS#1 RSA or SEC1 EC; ECDSA,
    /// Ed25519 and RSA keys).
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<Identity, IdentityError> {
        let chain = read_certificates(cert_file, CERT)?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| IdentityError::Pem {
            what: "private key",
            path: key_file.into(),
            source,
        })?;
        Ok(Identity { chain, key })
    }

    /// The certificate kept in `state_dir`, generated there on first use so the server keeps
    /// its identity (and clients their trust in it) across restarts.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join(STATE_IDENTITY);
        let pem = match state::read(&path)? {
            Some(pem) => pem,
            None => {
                let names = ["localhost"];
                let certified =
                    rcgen::generate_simple_self_signed(names.map(String::from).to_vec())
                        .map_err(|e| IdentityError::Generate(format!("a certificate: {e}")))?;
                let pem = certified.cert.pem() + &certified.signing_key.serialize_pem();
                if state::create_once(&path, pem.as_bytes())? {
                    tracing::info!(path = %path.display(), "generated the server certificate");
                }
                // Another process may have created it first: use what the file holds.
                state::read(&path)?.unwrap_or_default()
            }
        };
        // The certificate and its key share one file, so they always match.
        let chain = certificates(CertificateDer::pem_slice_iter(&pem).collect(), &path, CERT)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|source| IdentityError::Pem {
            what: "private key",
            path: path.clone(),
            source,
        })?;
        Ok(Identity { chain, key })
    }

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

/// The forms [`Fingerprint`]'s parser accepts, for error messages.
const FINGERPRINT_FORMS: &str = "sha256: and 64 hex digits, the 64 hex digits alone, or \
     32 colon-separated pairs AB:CD:... as `openssl x509 -fingerprint -sha256` prints them; \
     upper or lower case";

impl std::str::FromStr for Fingerprint {
    type Err = String;

    /// Parses 64 hex digits, with or without `sha256:` before them, or 32 pairs of hex digits
    /// separated by colons (openssl's form); any case.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{value:?} is not a SHA-256 fingerprint (write {FINGERPRINT_FORMS})");
        let hex = match value.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &value[7..],
            _ => value,
        };
        let pairs: Vec<&str> = match hex.contains(':') {
            true => hex.split(':').collect(),
            false => (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).unwrap_or(""))
                .collect(),
        };
        if pairs.len() != 32 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(pairs) {
            if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// The server's stateless-reset key, kept in `state_dir` (made on first use).
pub fn load_or_create_reset_key(state_dir: &Path) -> Result<Vec<u8>, IdentityError> {
    prepare_state_dir(state_dir)?;
    let path = state_dir.join(STATE_RESET_KEY);
    let key = match state::read(&path)? {
        Some(key) => key,
        None => {
            let mut key = vec![0u8; RESET_KEY_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| IdentityError::Generate("a random reset key".into()))?;
            state::create_once(&path, &key)?;
            // Another process may have created it first: use what the file holds.
            state::read(&path)?.unwrap_or_default()
        }
    };
    match key.len() {
        RESET_KEY_LEN => Ok(key),
        _ => Err(IdentityError::BadResetKey { path }),
    }
}

/// Reads a PEM bundle of CA certificates.
pub fn load_roots(ca_file: &Path) -> Result<rustls::RootCertStore, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca_file, ("CA file", "CA certificate"))? {
        roots.add(cert).map_err(|source| IdentityError::BadCa {
            path: ca_file.into(),
            source,
        })?;
    }
    Ok(roots)
}

/// How errors name a certificate file and what it must hold.
const CERT: (&str, &str) = ("certificate", "certificate");

/// Reads the PEM certificates in `path`; errors name the file as `file` and what it must hold
/// as `item`. None is an error.
fn read_certificates(
    path: &Path,
    names: (&'static str, &'static str),
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_file_iter(path).and_then(|certs| certs.collect());
    certificates(certs, path, names)
}

/// The certificates parsed from `path`, or an error naming it.
fn certificates(
    certs: Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error>,
    path: &Path,
    (file, item): (&'static str, &'static str),
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = certs.map_err(|source| IdentityError::Pem {
        what: file,
        path: path.into(),
        source,
    })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            what: item,
            path: path.into(),
        });
    }
    Ok(certs)
}

/// The default state directory: `$XDG_DATA_HOME/quictun`, else `~/.local/share/quictun`.
pub fn default_state_dir() -> PathBuf {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data_home.join("quictun")
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
        let openssl = vec!["AB"; 32].join(":");
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), parsed);
        assert_eq!("AB".repeat(32).parse::<Fingerprint>().unwrap(), parsed);
        assert_eq!("ab".repeat(32).parse::<Fingerprint>().unwrap(), parsed);
        let error = "sha256:12".parse::<Fingerprint>().unwrap_err();
        assert!(
            error.starts_with("\"sha256:12\" is not a SHA-256 fingerprint (write sha256: and 64"),
            "{error}"
        );
        for bad in [
            &"a".repeat(64 + 1),
            &format!("{}:", vec!["ab"; 32].join(":")),
            &format!(":{}", vec!["ab"; 32].join(":")),
            &vec!["abc"; 32].join(":"),
            &format!("{}::ab", vec!["ab"; 30].join(":")),
            &format!("+{}", "a".repeat(63)),
            &format!("sha256:sha256:{}", "ab".repeat(32)),
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

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn the_generated_identity_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("quictun-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = load_or_create_reset_key(&dir).unwrap();
        assert_eq!(load_or_create_reset_key(&dir).unwrap(), key);
        let first = Identity::load_or_create(&dir).unwrap();
        let second = Identity::load_or_create(&dir).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(STATE_IDENTITY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_files_are_named() {
        let error = Identity::from_pem_files(Path::new("/nope/c.pem"), Path::new("/nope/k.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read certificate /nope/c.pem"),
            "{error}"
        );
        assert!(
            load_roots(Path::new("/nope/ca.pem"))
                .unwrap_err()
                .to_string()
                .contains("/nope/ca.pem")
        );
    }
}
