//! Cleartext: the token parser for tokens that carry the target address itself.
//!
//! With key `""` the token is the address (`tcp:10.0.0.5:22`, `unix:/run/app.sock`); with key
//! `base64` it is the address in standard base64. The host checks that the result is a valid
//! address; this plugin only decodes.

use base64::Engine;
use quictun_plugin_api::{HostLog, PluginError, TokenParser, export_token_parser};

pub struct Cleartext {
    base64: bool,
}

impl TokenParser for Cleartext {
    fn new(config: &str, _log: HostLog) -> Result<Self, String> {
        match config {
            "" => Ok(Self { base64: false }),
            key if key.eq_ignore_ascii_case("base64") => Ok(Self { base64: true }),
            other => Err(format!(
                "unknown --token-parser-key {other:?} for Cleartext: use \"\" (plain) or \"base64\""
            )),
        }
    }

    fn target(&self, token: &[u8]) -> Result<String, PluginError> {
        let decoded;
        let bytes = if self.base64 {
            decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .map_err(|error| PluginError::refused(format!("token is not base64: {error}")))?;
            &decoded[..]
        } else {
            token
        };
        String::from_utf8(bytes.to_vec())
            .map_err(|_| PluginError::refused("token is not UTF-8 text"))
    }
}

export_token_parser!(Cleartext, name = "Cleartext", may_block = false);

#[cfg(test)]
mod tests {
    use super::*;
    use quictun_plugin_api::FailureKind;

    fn parser(key: &str) -> Result<Cleartext, String> {
        Cleartext::new(key, HostLog::discard("Cleartext"))
    }

    #[test]
    fn plain_key_returns_the_token() {
        let plain = parser("").unwrap();
        assert_eq!(
            plain.target(b"tcp:127.0.0.1:22").unwrap(),
            "tcp:127.0.0.1:22"
        );
    }

    #[test]
    fn base64_key_decodes() {
        let b64 = parser("base64").unwrap();
        assert_eq!(
            b64.target(b"dGNwOjEyNy4wLjAuMToyMg==").unwrap(),
            "tcp:127.0.0.1:22"
        );
        assert_eq!(b64.target(b"!!").unwrap_err().kind, FailureKind::Refused);
    }

    #[test]
    fn non_utf8_is_refused() {
        assert_eq!(
            parser("").unwrap().target(&[0xff, 0xfe]).unwrap_err().kind,
            FailureKind::Refused
        );
    }

    #[test]
    fn unknown_key_is_a_configuration_error() {
        let error = parser("aes").err().unwrap();
        assert!(error.contains("\"aes\""), "{error}");
    }
}
