//! Fixed: the token source that returns one token, its configuration string, for every
//! application connection.
//!
//! `quictun-client --token-source-plugin Fixed --token-source tcp:10.0.0.5:22`

use quictun_plugin_api::{HostLog, PluginError, TokenSource, export_token_source};

pub struct Fixed {
    token: Vec<u8>,
}

impl TokenSource for Fixed {
    fn new(config: &str, _log: HostLog) -> Result<Self, String> {
        if config.is_empty() {
            return Err(
                "Fixed needs the token to send as --token-source (e.g. tcp:127.0.0.1:22)".into(),
            );
        }
        Ok(Self {
            token: config.as_bytes().to_vec(),
        })
    }

    fn token(&self, _client_addr: &str) -> Result<Vec<u8>, PluginError> {
        Ok(self.token.clone())
    }
}

export_token_source!(Fixed, name = "Fixed", may_block = false);

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> HostLog {
        HostLog::discard("Fixed")
    }

    #[test]
    fn returns_the_configured_token_for_every_client() {
        let fixed = Fixed::new("tcp:127.0.0.1:22", log()).unwrap();
        assert_eq!(fixed.token("10.0.0.1:5000").unwrap(), b"tcp:127.0.0.1:22");
        assert_eq!(
            fixed.token("unix:/run/app.sock").unwrap(),
            b"tcp:127.0.0.1:22"
        );
    }

    #[test]
    fn an_empty_token_is_a_configuration_error() {
        let error = Fixed::new("", log()).err().unwrap();
        assert!(error.contains("--token-source"), "{error}");
    }
}
