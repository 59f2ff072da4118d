//! File: the token source that looks the client's address up in a file of lines
//! `CLIENT TOKEN`.
//!
//! CLIENT is an IP address (IPv4 or IPv6, matched exactly), a CIDR block, or `unix:/path` for
//! connections accepted on that UNIX listener. `#` starts a comment; blank lines are skipped.
//! An exact address beats a CIDR block, a longer prefix beats a shorter one, and among equals
//! the first line wins. The file is checked for changes on every lookup, so edits take effect
//! without a restart; a file that no longer parses keeps the last good table, and the reason
//! is logged once.
//!
//! `quictun-client --token-source-plugin File --token-source /etc/quictun/tokens`

mod table;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use quictun_plugin_api::{HostLog, PluginError, TokenSource, export_token_source};

pub use table::{Table, TableError};

pub struct File {
    path: PathBuf,
    log: HostLog,
    state: Mutex<State>,
}

/// The table in use and the version of the file it came from.
struct State {
    table: Arc<Table>,
    seen: Option<Version>,
}

/// What tells one version of the file from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl TokenSource for File {
    fn new(config: &str, log: HostLog) -> Result<Self, String> {
        if config.is_empty() {
            return Err("File needs the path of its token file as --token-source".into());
        }
        let path = PathBuf::from(config);
        let seen = version(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table = load(&path)?;
        log.info(&format!("{} entries from {}", table.len(), path.display()));
        let state = State {
            table: Arc::new(table),
            seen: Some(seen),
        };
        Ok(File {
            path,
            log,
            state: Mutex::new(state),
        })
    }

    fn token(&self, client_addr: &str) -> Result<Vec<u8>, PluginError> {
        let table = self.current_table();
        table
            .lookup(client_addr)
            .map(|token| token.as_bytes().to_vec())
            .ok_or_else(|| {
                PluginError::refused(format!(
                    "no line of {} matches {client_addr}",
                    self.path.display()
                ))
            })
    }
}

impl File {
    /// The table for the file as it is now, re-read when it changed.
    fn current_table(&self) -> Arc<Table> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = version(&self.path).ok();
        if now == state.seen {
            return state.table.clone();
        }
        state.seen = now;
        match now
            .ok_or_else(|| "the file is gone".to_owned())
            .and_then(|_| load(&self.path))
        {
            Ok(table) => {
                self.log.info(&format!(
                    "reloaded {}: {} entries",
                    self.path.display(),
                    table.len()
                ));
                state.table = Arc::new(table);
            }
            Err(reason) => self
                .log
                .warn(&format!("keeping the previous table: {reason}")),
        }
        state.table.clone()
    }
}

fn version(path: &Path) -> std::io::Result<Version> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(Version {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

fn load(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.parse()
        .map_err(|e: TableError| format!("{}: {e}", path.display()))
}

export_token_source!(File, name = "File", may_block = true);

#[cfg(test)]
mod tests {
    use super::*;
    use quictun_plugin_api::FailureKind;

    fn log() -> HostLog {
        HostLog::discard("File")
    }

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str, text: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("quictun-file-{tag}-{}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn source(file: &Scratch) -> File {
        File::new(file.0.to_str().unwrap(), log()).unwrap()
    }

    #[test]
    fn looks_up_ipv4_ipv6_and_cidr() {
        let file = Scratch::new(
            "lookup",
            "# tokens\n10.0.0.1 tcp:10.1.1.1:22\n\n10.0.0.0/8 tcp:10.2.2.2:22\n2001:db8::1 tcp:[::1]:80\n",
        );
        let source = source(&file);
        assert_eq!(source.token("10.0.0.1:5000").unwrap(), b"tcp:10.1.1.1:22");
        assert_eq!(source.token("10.9.9.9:5000").unwrap(), b"tcp:10.2.2.2:22");
        assert_eq!(source.token("[2001:db8::1]:443").unwrap(), b"tcp:[::1]:80");
        let refused = source.token("192.168.1.1:5000").unwrap_err();
        assert_eq!(refused.kind, FailureKind::Refused);
        assert!(
            refused.message.contains("192.168.1.1:5000"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn edits_take_effect_and_a_broken_file_keeps_the_last_good_table() {
        let file = Scratch::new("reload", "127.0.0.1 tcp:127.0.0.1:1\n");
        let source = source(&file);
        assert_eq!(source.token("127.0.0.1:9").unwrap(), b"tcp:127.0.0.1:1");
        // A different length guarantees a new version even within one mtime tick.
        std::fs::write(&file.0, "127.0.0.1 tcp:127.0.0.1:22\n").unwrap();
        assert_eq!(source.token("127.0.0.1:9").unwrap(), b"tcp:127.0.0.1:22");
        std::fs::write(&file.0, "127.0.0.1\n").unwrap();
        assert_eq!(source.token("127.0.0.1:9").unwrap(), b"tcp:127.0.0.1:22");
        std::fs::remove_file(&file.0).unwrap();
        assert_eq!(source.token("127.0.0.1:9").unwrap(), b"tcp:127.0.0.1:22");
    }

    #[test]
    fn a_missing_or_broken_file_is_a_start_up_error() {
        let error = File::new("/nonexistent/tokens", log()).err().unwrap();
        assert!(
            error.starts_with("cannot read /nonexistent/tokens"),
            "{error}"
        );
        let file = Scratch::new(
            "broken",
            "10.0.0.1 tcp:1.2.3.4:5\nnot-an-ip tcp:1.2.3.4:5\n",
        );
        let error = File::new(file.0.to_str().unwrap(), log()).err().unwrap();
        assert!(error.contains("line 2"), "{error}");
        assert!(File::new("", log()).is_err());
    }
}
