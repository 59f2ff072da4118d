//! Trust on first use: the client's record of which certificate each server showed first.
//!
//! One line per server, `SERVER_ENDPOINT sha256:HEX`, keyed by `--server-endpoint` exactly as
//! given. A certificate is recorded only once the handshake proved that the server holds its
//! key; a different one later is refused with a message that shows both fingerprints and the
//! line to delete to accept the new one.
//!
//! The file is a state file: read without following a link, and to add a server rewritten
//! whole and moved over the old one, under a lock on the directory so that two clients
//! recording at once both keep their line.

use std::path::{Path, PathBuf};

use crate::tls::{Fingerprint, IdentityError, prepare_state_dir, state};

/// Why a server's certificate is refused, or the file could not be used: one line.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("the certificate of {endpoint} changed: known {known}, now {seen}; if the change is expected, delete line {line} (\"{endpoint} {known}\") of {}", path.display())]
    Changed {
        endpoint: String,
        known: Fingerprint,
        seen: Fingerprint,
        line: usize,
        path: PathBuf,
    },
    #[error("{} line {line}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{} is not text", path.display())]
    NotText { path: PathBuf },
    #[error(transparent)]
    State(#[from] IdentityError),
}

/// The known-hosts file.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    pub fn new(path: PathBuf) -> KnownHosts {
        KnownHosts { path }
    }

    /// Refuses `seen` when another certificate is recorded for `endpoint`. An endpoint not
    /// recorded passes: [`KnownHosts::remember`] records it once the handshake is signed.
    pub fn check(&self, endpoint: &str, seen: Fingerprint) -> Result<(), KnownHostsError> {
        let text = self.read()?;
        self.compare(endpoint, seen, &text).map(|_| ())
    }

    /// Records `seen` for `endpoint` unless it is recorded already; refuses it when another
    /// certificate is.
    pub fn remember(&self, endpoint: &str, seen: Fingerprint) -> Result<(), KnownHostsError> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        prepare_state_dir(dir)?;
        let _lock = state::lock_dir(dir)?;
        let mut text = self.read()?;
        if self.compare(endpoint, seen, &text)? {
            return Ok(());
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{endpoint} {seen}\n"));
        state::replace(&self.path, text.as_bytes())?;
        tracing::warn!(server = endpoint, fingerprint = %seen, file = %self.path.display(),
            "trusting the server's certificate on first use");
        Ok(())
    }

    /// The file's text; none yet is empty.
    fn read(&self) -> Result<String, KnownHostsError> {
        let bytes = state::read(&self.path)?.unwrap_or_default();
        String::from_utf8(bytes).map_err(|_| KnownHostsError::NotText {
            path: self.path.clone(),
        })
    }

    /// Whether `text` records `seen` for `endpoint`; an error when it records another.
    fn compare(
        &self,
        endpoint: &str,
        seen: Fingerprint,
        text: &str,
    ) -> Result<bool, KnownHostsError> {
        match self.lookup(endpoint, text)? {
            None => Ok(false),
            Some((_, known)) if known == seen => Ok(true),
            Some((line, known)) => Err(KnownHostsError::Changed {
                endpoint: endpoint.to_owned(),
                known,
                seen,
                line,
                path: self.path.clone(),
            }),
        }
    }

    /// The recorded fingerprint for `endpoint` and its line number.
    fn lookup(
        &self,
        endpoint: &str,
        text: &str,
    ) -> Result<Option<(usize, Fingerprint)>, KnownHostsError> {
        for (index, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let (Some(name), Some(fingerprint)) = (fields.next(), fields.next()) else {
                continue;
            };
            if name.starts_with('#') || name != endpoint {
                continue;
            }
            let fingerprint = fingerprint
                .parse()
                .map_err(|reason| KnownHostsError::BadLine {
                    path: self.path.clone(),
                    line: index + 1,
                    reason,
                })?;
            return Ok(Some((index + 1, fingerprint)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quictun-known-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn remember_records_then_accepts_then_refuses_a_change() {
        let dir = scratch("records");
        let path = dir.join("known_hosts");
        let hosts = KnownHosts::new(path.clone());
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        hosts.remember("other:1", b).unwrap();
        hosts.remember("server:7500", a).unwrap();
        hosts.remember("server:7500", a).unwrap();
        hosts.check("server:7500", a).unwrap();
        for error in [
            hosts.check("server:7500", b).unwrap_err().to_string(),
            hosts.remember("server:7500", b).unwrap_err().to_string(),
        ] {
            assert!(error.contains(&format!("known {a}, now {b}")), "{error}");
            assert!(error.contains("delete line 2"), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("other:1 {b}\nserver:7500 {a}\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_alone_records_nothing() {
        let dir = scratch("check");
        let path = dir.join("known_hosts");
        let hosts = KnownHosts::new(path.clone());
        hosts.check("server:7500", Fingerprint([1; 32])).unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hand_edited_file_keeps_its_lines() {
        let dir = scratch("edited");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_hosts");
        std::fs::write(&path, "# servers\nold:1 sha256:bad").unwrap();
        let hosts = KnownHosts::new(path.clone());
        let a = Fingerprint([1; 32]);
        hosts.remember("server:7500", a).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# servers\nold:1 sha256:bad\nserver:7500 {a}\n")
        );
        let error = hosts.check("old:1", a).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
