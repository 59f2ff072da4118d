//! Feeding a tunnel's first bytes to the protocol discriminators.
//!
//! Each direction's first [`FEED_LIMIT`] bytes are fed, chunk by chunk as they are relayed
//! (never on a timer), to every discriminator that still wants them. The first affirmation
//! sets the tunnel's protocol; that discriminator's properties are updated as they come, and
//! the others stop being fed. Once nothing wants more bytes the relay pays one atomic load per
//! chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quictun_plugin_api::{Direction, DiscriminatorSessionBox, Verdict};
use tracing::{debug, warn};

use crate::plugins::Discriminator;
use crate::tunnel::Tunnel;

/// Bytes of each direction that discriminators see at most.
pub const FEED_LIMIT: usize = 64 * 1024;

/// One tunnel's discriminator sessions.
pub struct Sniffer {
    done: AtomicBool,
    state: Mutex<State>,
}

struct State {
    tunnel: Arc<Tunnel>,
    running: Vec<Running>,
    /// Bytes fed so far: client → server, server → client.
    fed: [usize; 2],
}

struct Running {
    plugin: String,
    protocol: String,
    may_block: bool,
    session: DiscriminatorSessionBox,
}

impl Sniffer {
    /// Starts a session of each discriminator for `tunnel`; `None` when there is nothing to run.
    pub fn start(discriminators: &[Discriminator], tunnel: Arc<Tunnel>) -> Option<Sniffer> {
        let running: Vec<Running> = discriminators
            .iter()
            .filter_map(|d| match d.session() {
                Ok(session) => Some(Running {
                    plugin: d.info().name.clone(),
                    protocol: d.protocol().to_owned(),
                    may_block: d.info().may_block,
                    session,
                }),
                Err(error) => {
                    warn!(plugin = %d.info().name, "discriminator failed to start: {error}");
                    None
                }
            })
            .collect();
        if running.is_empty() {
            return None;
        }
        let state = State {
            tunnel,
            running,
            fed: [0, 0],
        };
        Some(Sniffer {
            done: AtomicBool::new(false),
            state: Mutex::new(state),
        })
    }

    /// Feeds bytes seen in `direction`.
    pub fn feed(&self, direction: Direction, data: &[u8]) {
        if self.done.load(Ordering::Relaxed) || data.is_empty() {
            return;
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.feed(direction, data) {
            self.done.store(true, Ordering::Relaxed);
        }
    }
}

impl State {
    /// Returns whether the sniffing is over.
    fn feed(&mut self, direction: Direction, data: &[u8]) -> bool {
        let index = direction as usize;
        let take = data.len().min(FEED_LIMIT - self.fed[index]);
        self.fed[index] += take;
        let data = &data[..take];
        if !data.is_empty() {
            let tunnel = self.tunnel.clone();
            self.running
                .retain_mut(|running| running.feed(&tunnel, direction, data));
            if let Some(protocol) = tunnel.protocol() {
                self.running
                    .retain(|running| running.protocol == protocol.name);
            }
        }
        self.running.is_empty() || self.fed.iter().all(|&fed| fed >= FEED_LIMIT)
    }
}

impl Running {
    /// Feeds one chunk; returns whether this discriminator wants more.
    fn feed(&mut self, tunnel: &Tunnel, direction: Direction, data: &[u8]) -> bool {
        let session = &mut self.session;
        // block_in_place hands this worker's other tasks to another worker while the plugin
        // blocks; it needs the multi-threaded runtime.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let verdict = if self.may_block && multi_thread {
            tokio::task::block_in_place(|| session.feed(direction, data.into()))
        } else {
            session.feed(direction, data.into())
        };
        let verdict = match verdict.into_result() {
            Ok(verdict) => verdict,
            Err(error) => {
                warn!(plugin = %self.plugin, "discriminator failed: {error}");
                return false;
            }
        };
        if verdict.is_affirmed() {
            tunnel.affirm(&self.protocol, self.properties());
        }
        if verdict == Verdict::Denied {
            debug!(plugin = %self.plugin, "not {}", self.protocol);
        }
        verdict.wants_more()
    }

    /// The session's properties, when it has a valid JSON object.
    fn properties(&self) -> Option<serde_json::Value> {
        let text = match self.session.properties().into_result() {
            Ok(text) if text.is_empty() => return None,
            Ok(text) => text,
            Err(error) => {
                warn!(plugin = %self.plugin, "discriminator failed: {error}");
                return None;
            }
        };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value @ serde_json::Value::Object(_)) => Some(value),
            _ => {
                warn!(plugin = %self.plugin, "discriminator properties are not a JSON object");
                None
            }
        }
    }
}
