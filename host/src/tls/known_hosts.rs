//! Trust on first use: the client's record of which certificate each server showed first.
//!
//! One line per server, `SERVER_ENDPOINT sha256:HEX`, keyed by `--server-endpoint` exactly as
//! given. The first certificate seen is recorded; a different one later is refused with a
//! message that shows both fingerprints and the line to delete to accept the new one.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::tls::Fingerprint;

/// The known-hosts file.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
    /// Serialises check-then-record between connection attempts of this process.
    lock: Mutex<()>,
}

impl KnownHosts {
    pub fn new(path: PathBuf) -> KnownHosts {
        KnownHosts {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Accepts `seen` for `endpoint` if it is the recorded certificate, or records it when
    /// none is; refuses a different one.
    pub fn check(&self, endpoint: &str, seen: Fingerprint) -> Result<(), String> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.lookup(endpoint)? {
            Some((_, known)) if known == seen => Ok(()),
            Some((line, known)) => Err(format!(
                "the certificate of {endpoint} changed: known {known}, now {seen}; if the change is expected, delete line {line} (\"{endpoint} {known}\") of {}",
                self.path.display()
            )),
            None => self.record(endpoint, seen),
        }
    }

    /// The recorded fingerprint for `endpoint` and its line number.
    fn lookup(&self, endpoint: &str) -> Result<Option<(usize, Fingerprint)>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
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
                .map_err(|e| format!("{} line {}: {e}", self.path.display(), index + 1))?;
            return Ok(Some((index + 1, fingerprint)));
        }
        Ok(None)
    }

    fn record(&self, endpoint: &str, seen: Fingerprint) -> Result<(), String> {
        let fail =
            |e: std::io::Error| format!("cannot record the server in {}: {e}", self.path.display());
        if let Some(dir) = self.path.parent() {
            crate::tls::create_private_dir(dir).map_err(|e| e.to_string())?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        writeln!(file, "{endpoint} {seen}").map_err(fail)?;
        tracing::warn!(server = endpoint, fingerprint = %seen, file = %self.path.display(),
            "trusting the server's certificate on first use");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_records_then_accepts_then_refuses_a_change() {
        let dir = std::env::temp_dir().join(format!("quictun-known-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("known_hosts");
        let hosts = KnownHosts::new(path.clone());
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        hosts.check("other:1", b).unwrap();
        hosts.check("server:7500", a).unwrap();
        hosts.check("server:7500", a).unwrap();
        let error = hosts.check("server:7500", b).unwrap_err();
        assert!(error.contains(&format!("known {a}, now {b}")), "{error}");
        assert!(error.contains("delete line 2"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("other:1 {b}\nserver:7500 {a}\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
