//! An example third-party plugin: a token source that hands out its targets in turn, so
//! application connections are spread over several servers.
//!
//! ```sh
//! quictun-client --token-source-plugin ./target/release/libround_robin_source.so \
//!     --token-source "tcp:10.0.0.5:5432,tcp:10.0.0.6:5432"
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use quictun_plugin_api::{HostLog, PluginError, TokenSource, export_token_source};

pub struct RoundRobin {
    targets: Vec<String>,
    next: AtomicUsize,
}

impl TokenSource for RoundRobin {
    fn new(config: &str, log: HostLog) -> Result<Self, String> {
        let targets: Vec<String> = config
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if targets.is_empty() {
            return Err("give a comma-separated list of targets as --token-source".into());
        }
        log.info(&format!(
            "spreading connections over {} targets",
            targets.len()
        ));
        Ok(RoundRobin {
            targets,
            next: AtomicUsize::new(0),
        })
    }

    fn token(&self, _client_addr: &str) -> Result<Vec<u8>, PluginError> {
        // Called from several threads at once: an atomic counter keeps the turns fair.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(self.targets[turn % self.targets.len()].clone().into_bytes())
    }
}

export_token_source!(RoundRobin, name = "RoundRobin", may_block = false);
