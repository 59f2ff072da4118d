//! A client's services (SPEC §11): each is a listener with its own token source, and all of
//! them share the client's one QUIC connection.
//!
//! Without a `services:` list the single-listener flags make one service named `default`.
//! A service's name is what the REST API and the metrics show, so names are checked here:
//! unique, and 1 to 32 of `a-z`, `0-9`, `_`, `-`. Listen addresses are unique too, except a
//! TCP or UDP port 0, for which the kernel picks a different port each time; `tcp:` and
//! `udp:` on the same port are different listeners.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::plugins::TokenSource;
use crate::wire::addr::Address;

/// The name of the service the single-listener flags make.
pub const DEFAULT_SERVICE: &str = "default";

/// One listener of the client and the token source its connections are asked about.
#[derive(Debug)]
pub struct Service {
    pub name: ServiceName,
    pub listen: Address,
    pub source: TokenSource,
}

/// A checked service name: 1 to 32 of `a-z`, `0-9`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName(Arc<str>);

/// Why a list of services cannot be served; each names the service.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service {0:?}: a name is 1 to 32 of a-z, 0-9, _ and -")]
    BadName(String),
    #[error("service {0:?} is named twice")]
    DuplicateName(String),
    #[error("service {name:?}: listen-on {listen} is already service {other:?}'s")]
    DuplicateListen {
        name: String,
        listen: String,
        other: String,
    },
    #[error("no service to serve")]
    None,
}

impl ServiceName {
    /// The name as shared by the tunnels of the service.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = ServiceError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 32 || !name.chars().all(allowed) {
            return Err(ServiceError::BadName(name.to_owned()));
        }
        Ok(ServiceName(name.into()))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that names and listen addresses are unique, in the order given: the error names
/// the later service of a pair.
pub fn check_unique<'a>(
    services: impl IntoIterator<Item = (&'a ServiceName, &'a Address)>,
) -> Result<(), ServiceError> {
    let mut seen: Vec<(&ServiceName, &Address)> = Vec::new();
    for (name, listen) in services {
        if seen.iter().any(|(n, _)| *n == name) {
            return Err(ServiceError::DuplicateName(name.to_string()));
        }
        let kernel_picks = matches!(listen, Address::Tcp(hp) | Address::Udp(hp) if hp.port == 0);
        if let Some((other, _)) = seen.iter().find(|(_, l)| *l == listen && !kernel_picks) {
            return Err(ServiceError::DuplicateListen {
                name: name.to_string(),
                listen: listen.to_string(),
                other: other.to_string(),
            });
        }
        seen.push((name, listen));
    }
    if seen.is_empty() {
        return Err(ServiceError::None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> ServiceName {
        text.parse().unwrap()
    }

    #[test]
    fn names_are_short_lower_case_words() {
        for good in ["default", "a", "web-1", "db_2", &"x".repeat(32)] {
            assert_eq!(name(good).as_str(), good);
        }
        for bad in ["", "Web", "a b", "é", "a.b", "a/b", "a\n", &"x".repeat(33)] {
            assert_eq!(
                bad.parse::<ServiceName>(),
                Err(ServiceError::BadName(bad.to_owned()))
            );
        }
    }

    #[test]
    fn names_and_addresses_are_unique() {
        let (a, b) = (name("a"), name("b"));
        let one: Address = "tcp:127.0.0.1:6500".parse().unwrap();
        let two: Address = "unix:/tmp/x.sock".parse().unwrap();
        let any: Address = "tcp:127.0.0.1:0".parse().unwrap();
        let any_udp: Address = "udp:127.0.0.1:0".parse().unwrap();
        let one_udp: Address = "udp:127.0.0.1:6500".parse().unwrap();
        assert_eq!(check_unique([(&a, &one), (&b, &two)]), Ok(()));
        assert_eq!(check_unique([(&a, &any), (&b, &any)]), Ok(()));
        assert_eq!(check_unique([(&a, &any_udp), (&b, &any_udp)]), Ok(()));
        assert_eq!(check_unique([(&a, &one), (&b, &one_udp)]), Ok(()));
        assert!(check_unique([(&a, &one_udp), (&b, &one_udp)]).is_err());
        assert_eq!(
            check_unique([(&a, &one), (&a, &two)]),
            Err(ServiceError::DuplicateName("a".into()))
        );
        let error = check_unique([(&a, &one), (&b, &one)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "service \"b\": listen-on tcp:127.0.0.1:6500 is already service \"a\"'s"
        );
        assert_eq!(check_unique([]), Err(ServiceError::None));
    }
}
