//! The client's `services:` key of a `--config` file (SPEC §11): a list of maps with `name`,
//! `listen-on`, `token-source-plugin` (default Fixed) and `token-source`, read into
//! [`ServiceEntry`]s by [`entries`] and turned into [`Service`]s, plugins loaded, by [`build`].
//!
//! Every error names the service (or, before its name is known, its place in the list), so a
//! bad entry stops the start with one line saying which.

use std::path::Path;

use anyhow::Context;
use serde_yaml_ng::Value;

use super::config::{ConfigError, scalars};
use crate::client::service::{self, Service, ServiceName};
use crate::plugins::TokenSource;
use crate::wire::addr::Address;

/// The config key.
pub const SERVICES: &str = "services";

/// The keys of one service.
const KEYS: [&str; 4] = ["name", "listen-on", "token-source-plugin", "token-source"];

/// One entry of `services:`, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub listen_on: String,
    pub token_source_plugin: String,
    pub token_source: String,
}

/// Reads the value of `services:`.
pub fn entries(value: Value, path: &Path) -> Result<Vec<ServiceEntry>, ConfigError> {
    let error = |service: String, reason: String| ConfigError::Service {
        path: path.to_path_buf(),
        service,
        reason,
    };
    let Value::Sequence(items) = value else {
        return Err(ConfigError::ServicesNotAList {
            path: path.to_path_buf(),
        });
    };
    let named = |at: usize, name: Option<String>| match name {
        Some(name) => format!("{name:?}"),
        None => format!("#{}", at + 1),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(at, item)| entry(item, path).map_err(|(who, why)| error(named(at, who), why)))
        .collect()
}

/// One entry; an error is the service's name if known, and the reason.
fn entry(item: Value, path: &Path) -> Result<ServiceEntry, (Option<String>, String)> {
    let Value::Mapping(map) = item else {
        return Err((
            None,
            "must be a map of name, listen-on, token-source-plugin and token-source".into(),
        ));
    };
    let mut values: [Option<String>; 4] = Default::default();
    let mut unknown = None;
    for (key, value) in map {
        let Some(at) = key
            .as_str()
            .and_then(|k| KEYS.iter().position(|known| *known == k))
        else {
            unknown = Some(format!("{:?}", key.as_str().unwrap_or("?")));
            continue;
        };
        let text = scalars(KEYS[at], value, false, path).map_err(|e| (None, e.to_string()))?;
        values[at] = text.into_iter().next();
    }
    let [name, listen_on, plugin, source] = values;
    if let Some(key) = unknown {
        return Err((
            name,
            format!("unknown key {key} (a service has {})", KEYS.join(", ")),
        ));
    }
    let name = name.ok_or((None, "has no name".to_owned()))?;
    let listen_on = listen_on.ok_or((Some(name.clone()), "has no listen-on".to_owned()))?;
    Ok(ServiceEntry {
        name,
        listen_on,
        token_source_plugin: plugin.unwrap_or_else(|| "Fixed".into()),
        token_source: source.unwrap_or_default(),
    })
}

/// Checks the entries, names and addresses first, then loads each token source; the error
/// names the service.
pub fn build(entries: &[ServiceEntry], plugin_dir: Option<&Path>) -> anyhow::Result<Vec<Service>> {
    let mut checked: Vec<(ServiceName, Address)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let name: ServiceName = entry.name.parse()?;
        let listen = entry
            .listen_on
            .parse()
            .with_context(|| format!("service {:?}: listen-on", entry.name))?;
        checked.push((name, listen));
    }
    service::check_unique(checked.iter().map(|(name, listen)| (name, listen)))?;
    let mut services = Vec::with_capacity(entries.len());
    for ((name, listen), entry) in checked.into_iter().zip(entries) {
        let source = TokenSource::load(&entry.token_source_plugin, &entry.token_source, plugin_dir)
            .with_context(|| format!("service {:?}", entry.name))?;
        services.push(Service {
            name,
            listen,
            source,
        });
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<Vec<ServiceEntry>, String> {
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        entries(value, Path::new("c.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn entries_take_the_four_keys_and_the_default_plugin() {
        let got = read("- {name: web, listen-on: 'tcp:127.0.0.1:1', token-source: 'tcp:127.0.0.1:80'}\n- {name: db, listen-on: 'unix:/x', token-source-plugin: File, token-source: ./t}\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].token_source_plugin, "Fixed");
        assert_eq!(got[0].token_source, "tcp:127.0.0.1:80");
        assert_eq!(got[1].name, "db");
        assert_eq!(got[1].token_source_plugin, "File");
    }

    #[test]
    fn a_bad_entry_is_named() {
        let cases = [
            ("services must be a list", "{a: 1}"),
            (
                "service \"web\": unknown key \"bogus\"",
                "- {name: web, listen-on: x, bogus: 1}",
            ),
            (
                "service #2: has no name",
                "- {name: a, listen-on: x}\n- {listen-on: y}",
            ),
            ("service #1: must be a map", "- just text"),
            ("service \"web\": has no listen-on", "- {name: web}"),
            ("service #1: ", "- {name: [a], listen-on: x}"),
        ];
        for (expected, yaml) in cases {
            let error = read(yaml).unwrap_err();
            assert!(error.starts_with("--config c.yaml: "), "{error}");
            assert!(error.contains(expected), "{yaml}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
