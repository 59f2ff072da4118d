//! Spice: the protocol discriminator for SPICE remote-desktop connections.
//!
//! Every SPICE channel is its own TCP connection that starts with the client's link header
//! (magic `REDQ`). The discriminator affirms SPICE on that magic and reports:
//!
//! - `version`: the client's link version, e.g. `2.2`;
//! - `channelType`: `main`, `display`, `inputs`, … or `unknown`;
//! - `sessionId`: 8 hex digits, the same for every channel of one session: from the link
//!   message's connection id, or on the main channel (whose link carries 0) from the server's
//!   SPICE_MSG_MAIN_INIT;
//! - `serverName` and `serverUUID` (main channel only): from SPICE_MSG_MAIN_NAME and _UUID.
//!
//! [`parse`] holds the pure decoders, [`session`] the incremental per-tunnel state.

pub mod parse;
pub mod session;

use quictun_plugin_api::{Discriminator, HostLog};

pub use session::{Properties, SpiceSession};

/// The SPICE discriminator. It has no configuration.
#[derive(Debug)]
pub struct Spice;

/// The most of a rejected configuration quoted back, so the error stays one short line.
const QUOTED_CONFIG_CHARS: usize = 40;

impl Discriminator for Spice {
    type Session = SpiceSession;

    fn new(config: &str, _log: HostLog) -> Result<Self, String> {
        if config.trim().is_empty() {
            return Ok(Spice);
        }
        let quoted: String = config.chars().take(QUOTED_CONFIG_CHARS).collect();
        // `{:?}` escapes newlines, which keeps the message on one line.
        Err(format!(
            "the Spice discriminator takes no configuration, got {quoted:?}"
        ))
    }

    fn protocol(&self) -> String {
        "spice".to_string()
    }

    fn session(&self) -> SpiceSession {
        SpiceSession::new()
    }
}

#[cfg(test)]
mod tests;

quictun_plugin_api::export_discriminator!(Spice, name = "Spice", may_block = false);
