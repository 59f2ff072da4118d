//! The cluster key (`--cluster-key-file`, SPEC §12): the secret that the instances of one
//! service share, so that each recognises the others' connection IDs, answers their stale
//! connections with a valid stateless reset, and accepts their Retry tokens.
//!
//! The file holds 64 or more hex digits (32 random bytes or more), whitespace around them
//! allowed; `quictun-server --generate cluster-key` writes one. A file that group or others
//! may read (or write) is refused: the key lets its holder forge those resets and tokens
//! (docs/SECURITY.md). A link is followed, as secret stores often mount keys through links:
//! whoever chose the path chose what it points to.
//!
//! Each key the server uses is derived with HKDF-SHA256 (RFC 5869), stable across versions
//! (docs/SCALING.md, "Cluster key"): PRK = HKDF-Extract(salt = [`SALT`], IKM = the key's
//! bytes), then 32 bytes of HKDF-Expand(PRK, info = label) for each of the labels `reset`,
//! `cid` and `retry` ([`Label`]).

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// The HKDF-Extract salt: fixed, so that every version derives the same keys.
pub const SALT: &[u8] = b"quictun cluster key";
/// Bytes of a key `--generate cluster-key` writes, and the fewest a file may hold.
pub const MIN_BYTES: usize = 32;
/// The longest file read: a key and some whitespace fit many times over.
const MAX_FILE: u64 = 4096;

/// What a derived key is for; its name is the HKDF info label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// The stateless-reset key (`reset`).
    Reset,
    /// The key that checks connection IDs (`cid`).
    Cid,
    /// The address-validation (Retry) token key (`retry`).
    Retry,
}

impl Label {
    pub fn info(self) -> &'static [u8] {
        match self {
            Label::Reset => b"reset",
            Label::Cid => b"cid",
            Label::Retry => b"retry",
        }
    }
}

/// A cluster key, read and checked: 32 bytes or more.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

/// Why a cluster key file was refused: one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterKeyError {
    #[error("cannot read cluster key file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cluster key file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "cluster key file {} is open to group or others (mode {mode:04o}): run chmod 600 {}",
        path.display(), path.display()
    )]
    Open { path: PathBuf, mode: u32 },
    #[error(
        "cluster key file {}: {reason}; write a new key with (umask 077; quictun-server --generate cluster-key > {})",
        path.display(), path.display()
    )]
    Bad { path: PathBuf, reason: BadKey },
}

/// What is wrong with a key's text. The key itself is never shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("character {0} is not a hex digit (expected 64 or more hex digits)")]
    NotHex(usize),
    #[error("{0} hex digits is too short (64 or more, 32 random bytes, are needed)")]
    TooShort(usize),
    #[error("{0} hex digits is an odd number (two make a byte)")]
    Odd(usize),
    #[error("larger than {MAX_FILE} bytes (expected 64 or more hex digits)")]
    TooLarge,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

impl ClusterKey {
    /// A new key of [`MIN_BYTES`] from the OS's random generator.
    pub fn generate() -> Result<ClusterKey, ring::error::Unspecified> {
        let mut bytes = vec![0u8; MIN_BYTES];
        SystemRandom::new().fill(&mut bytes)?;
        Ok(ClusterKey(bytes))
    }

    /// The key as lower-case hex, as the file holds it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses a key file's text: hex digits (either case), whitespace around them allowed.
    pub fn parse(text: &str) -> Result<ClusterKey, BadKey> {
        let hex = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let offset = text.len()
            - text
                .trim_start_matches(|c: char| c.is_ascii_whitespace())
                .len();
        if let Some(at) = hex.bytes().position(|b| !b.is_ascii_hexdigit()) {
            return Err(BadKey::NotHex(offset + at + 1));
        }
        if hex.len() < 2 * MIN_BYTES {
            return Err(BadKey::TooShort(hex.len()));
        }
        if hex.len() % 2 == 1 {
            return Err(BadKey::Odd(hex.len()));
        }
        let bytes = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| (digit(pair[0]) << 4) | digit(pair[1]))
            .collect();
        Ok(ClusterKey(bytes))
    }

    /// Reads the key file `path`: a regular file that neither group nor others may read or
    /// write, holding a key [`parse`](Self::parse) accepts.
    pub fn load(path: &Path) -> Result<ClusterKey, ClusterKeyError> {
        let failed = |source| ClusterKeyError::Read {
            path: path.into(),
            source,
        };
        // Non-blocking, so a FIFO at the path cannot hang the start.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        if !meta.is_file() {
            return Err(ClusterKeyError::NotAFile { path: path.into() });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(ClusterKeyError::Open {
                path: path.into(),
                mode: meta.mode() & 0o7777,
            });
        }
        let bad = |reason| ClusterKeyError::Bad {
            path: path.into(),
            reason,
        };
        let mut text = String::new();
        let read = file.take(MAX_FILE + 1).read_to_string(&mut text);
        match read {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(bad(BadKey::NotHex(1))),
            Err(e) => return Err(failed(e)),
            Ok(n) if n as u64 > MAX_FILE => return Err(bad(BadKey::TooLarge)),
            Ok(_) => {}
        }
        ClusterKey::parse(&text).map_err(bad)
    }

    /// The 32-byte key for `label`: HKDF-Expand(HKDF-Extract([`SALT`], key), label, 32).
    pub fn derive(&self, label: Label) -> [u8; 32] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&self.0);
        let mut out = [0u8; 32];
        // Expanding 32 bytes of SHA-256 output is always within HKDF's bound (255 × 32).
        if let Ok(okm) = prk.expand(&[label.info()], Len32) {
            let _ = okm.fill(&mut out);
        }
        out
    }
}

/// The output length of [`ClusterKey::derive`], as ring's HKDF wants it.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The value of an ASCII hex digit (already checked).
fn digit(b: u8) -> u8 {
    char::from(b).to_digit(16).unwrap_or(0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn parses_hex_of_either_case_with_whitespace_around() {
        let key = ClusterKey::parse(&format!("  {}\n\n", KEY.to_uppercase())).unwrap();
        assert_eq!(key.to_hex(), KEY);
        let longer = format!("{KEY}{KEY}ab");
        assert_eq!(ClusterKey::parse(&longer).unwrap().0.len(), 65);
    }

    #[test]
    fn refuses_short_odd_and_non_hex_keys_without_showing_them() {
        assert_eq!(ClusterKey::parse(&KEY[..62]), Err(BadKey::TooShort(62)));
        assert_eq!(ClusterKey::parse(""), Err(BadKey::TooShort(0)));
        assert_eq!(ClusterKey::parse(&format!("{KEY}a")), Err(BadKey::Odd(65)));
        let inner_space = format!("{} {}", &KEY[..32], &KEY[32..]);
        assert_eq!(ClusterKey::parse(&inner_space), Err(BadKey::NotHex(33)));
        let error = ClusterKey::parse(&format!("\n{}g", &KEY[..63])).unwrap_err();
        assert_eq!(error, BadKey::NotHex(65));
        assert!(!error.to_string().contains(&KEY[..8]), "{error}");
        assert!(!format!("{:?}", ClusterKey::parse(KEY).unwrap()).contains("0001"));
    }

    #[test]
    fn generated_keys_are_64_hex_digits_and_differ() {
        let a = ClusterKey::generate().unwrap();
        let b = ClusterKey::generate().unwrap();
        assert_eq!(a.to_hex().len(), 64);
        assert_ne!(a, b);
        assert_eq!(ClusterKey::parse(&a.to_hex()).unwrap(), a);
    }

    /// The derivation is part of the contract between versions (docs/SCALING.md): these
    /// values were computed independently (Python's hmac module, RFC 5869 by hand).
    #[test]
    fn derived_keys_are_stable() {
        let key = ClusterKey::parse(KEY).unwrap();
        assert_eq!(
            hex(&key.derive(Label::Reset)),
            "7e64da4dbb1f42262d5e24a47d57a145219605d0fd2fc305891fd1f23673460c"
        );
        assert_eq!(
            hex(&key.derive(Label::Cid)),
            "f29cdb8af3cc56e7336bb23c6a1b6824c18e1412af1b123557d583e1d8a09efb"
        );
        assert_eq!(
            hex(&key.derive(Label::Retry)),
            "480471bdab4d7b8df9409c6be00bcf23aa34e24fd52ead1b6b64549baf6e2d8b"
        );
    }

    #[test]
    fn a_file_open_to_group_or_others_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("quictun-cluster-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        for (mode, refused) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match ClusterKey::load(&path) {
                Ok(key) => assert!(!refused && key.to_hex() == KEY, "{mode:o}"),
                Err(error) => {
                    let text = error.to_string();
                    assert!(refused, "{mode:o}: {text}");
                    assert!(
                        text.contains(&format!("chmod 600 {}", path.display())),
                        "{text}"
                    );
                }
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "x".repeat(5000)).unwrap();
        let error = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(error.contains("larger than 4096 bytes"), "{error}");
        let error = ClusterKey::load(&dir).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
