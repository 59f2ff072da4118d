//! `--config FILE`: a YAML file whose keys are long flag names, as the original's
//! `configs/quictun-*.yaml` are written.
//!
//! The file becomes flags placed before the command line's own, and a flag given on the
//! command line replaces the file's value. `""` means unset; lists are repeated flags;
//! `log-format: console` means `text`; `log-output-paths` (a list, or one text of paths
//! separated by commas, as the original wrote it) names files that get a copy of the log;
//! the original's other log keys (`log-name`, `log-development`, …) are named together in
//! one warning that they are ignored; any other unknown key is an error naming it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command};
use serde_yaml_ng::Value;

use super::services::{self, SERVICES, ServiceEntry};

/// What is wrong with a `--config` file: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read --config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {} is not valid YAML: {source}", path.display())]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("--config {} must be a mapping of flag names to values", path.display())]
    NotAMapping { path: PathBuf },
    #[error("--config {}: keys must be flag names", path.display())]
    KeyNotText { path: PathBuf },
    #[error("--config {}: unknown key {key:?}", path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("--config {}: {key:?} must be a text, number or boolean", path.display())]
    NotAScalar { path: PathBuf, key: String },
    #[error("--config {}: {key:?} takes one value, not a list", path.display())]
    NotRepeatable { path: PathBuf, key: String },
    #[error("--config {}: services must be a list of maps", path.display())]
    ServicesNotAList { path: PathBuf },
    #[error("--config {}: service {service}: {reason}", path.display())]
    Service {
        path: PathBuf,
        service: String,
        reason: String,
    },
}

/// The command line with the file's flags in front, and what the file says about logging.
#[derive(Debug, Default)]
pub struct Expanded {
    pub args: Vec<OsString>,
    pub logging: Logging,
    /// The client's `services:`, when the file has them.
    pub services: Option<Vec<ServiceEntry>>,
}

/// What a `--config` file says about logging, used once logging is set up.
#[derive(Debug, Default, Clone)]
pub struct Logging {
    /// Warnings to log at start.
    pub warnings: Vec<String>,
    /// `log-output-paths`: files (or `stdout`, `stderr`) the log goes to.
    pub output_paths: Vec<String>,
}

/// The original's YAML key for where logs go; not a flag, only a `--config` key.
const LOG_OUTPUT_PATHS: &str = "log-output-paths";

/// Expands `--config FILE` (or `-c FILE`) in `args` for `command`.
pub fn expand(args: Vec<OsString>, command: &Command) -> Result<Expanded, ConfigError> {
    let Some(path) = config_path(&args) else {
        return Ok(Expanded {
            args,
            ..Expanded::default()
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let given = flags_given(&args);
    let mut expanded = Expanded::default();
    let mut from_file = file_flags(&text, &path, command, &given, &mut expanded)?;
    let mut all = args.into_iter();
    expanded.args.extend(all.next());
    expanded.args.append(&mut from_file);
    expanded.args.extend(all);
    Ok(expanded)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        if let Some(value) = arg.strip_prefix("--config=") {
            return Some(value.into());
        }
        if arg == "--config" || arg == "-c" {
            return iter.next().map(Into::into);
        }
    }
    None
}

/// Long flag names used on the command line.
fn flags_given(args: &[OsString]) -> HashSet<String> {
    args.iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|flag| flag.split('=').next().unwrap_or(flag).to_owned())
        .collect()
}

fn file_flags(
    text: &str,
    path: &Path,
    command: &Command,
    given: &HashSet<String>,
    expanded: &mut Expanded,
) -> Result<Vec<OsString>, ConfigError> {
    let file = path.display();
    let path = || path.to_path_buf();
    let document: Value = serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path(),
        source,
    })?;
    let mapping = match document {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(mapping) => mapping,
        _ => return Err(ConfigError::NotAMapping { path: path() }),
    };
    let mut flags = Vec::new();
    let mut ignored = Vec::new();
    for (key, value) in mapping {
        let Value::String(key) = key else {
            return Err(ConfigError::KeyNotText { path: path() });
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config");
        let Some(arg) = arg else {
            if key == LOG_OUTPUT_PATHS {
                expanded.logging.output_paths = output_paths(&key, value, &path())?;
                continue;
            }
            if key == SERVICES && has_services(command) {
                expanded.services = Some(services::entries(value, &path())?);
                continue;
            }
            if key.starts_with("log-") {
                ignored.push(format!("{key:?}"));
                continue;
            }
            return Err(ConfigError::UnknownKey { path: path(), key });
        };
        if given.contains(&key) {
            continue;
        }
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        for value in scalars(&key, value, repeatable, &path())? {
            let value = if key == "log-format" && value == "console" {
                "text".to_owned()
            } else {
                value
            };
            flags.push(OsString::from(format!("--{key}={value}")));
        }
    }
    if !ignored.is_empty() {
        expanded.logging.warnings.push(format!(
            "--config {file}: the original's log keys {} have no meaning here and are ignored",
            ignored.join(", ")
        ));
    }
    Ok(flags)
}

/// Whether `command` has services: the client, whose services each have a token source.
fn has_services(command: &Command) -> bool {
    command
        .get_arguments()
        .any(|a| a.get_long() == Some("token-source"))
}

/// `log-output-paths` as a list of paths: a YAML list, or one text separated by commas.
fn output_paths(key: &str, value: Value, path: &Path) -> Result<Vec<String>, ConfigError> {
    let paths = scalars(key, value, true, path)?
        .iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(paths)
}

/// The values of one key as flag values; `""` and null mean unset.
pub(crate) fn scalars(
    key: &str,
    value: Value,
    repeatable: bool,
    path: &Path,
) -> Result<Vec<String>, ConfigError> {
    let (path, key) = (path.to_path_buf(), key.to_owned());
    let one = |value: Value| match value {
        Value::Null => Ok(None),
        Value::String(text) if text.is_empty() => Ok(None),
        Value::String(text) => Ok(Some(text)),
        Value::Bool(flag) => Ok(Some(flag.to_string())),
        Value::Number(number) => Ok(Some(number.to_string())),
        _ => Err(ConfigError::NotAScalar {
            path: path.clone(),
            key: key.clone(),
        }),
    };
    match value {
        Value::Sequence(items) if repeatable => items
            .into_iter()
            .map(one)
            .filter_map(Result::transpose)
            .collect(),
        Value::Sequence(_) => Err(ConfigError::NotRepeatable { path, key }),
        other => Ok(one(other)?.into_iter().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn command() -> Command {
        Command::new("t")
            .arg(Arg::new("config").long("config").short('c'))
            .arg(Arg::new("listen-on").long("listen-on"))
            .arg(Arg::new("token-source").long("token-source"))
            .arg(Arg::new("log-format").long("log-format"))
            .arg(Arg::new("verify-remote-endpoint").long("verify-remote-endpoint"))
            .arg(
                Arg::new("allow-target")
                    .long("allow-target")
                    .action(ArgAction::Append),
            )
    }

    fn run(yaml: &str, cli: &[&str]) -> Result<Expanded, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "quictun-config-{}-{}.yaml",
            std::process::id(),
            cli.len() + yaml.len()
        ));
        std::fs::write(&path, yaml).unwrap();
        let mut args: Vec<OsString> = vec!["t".into(), "--config".into(), path.clone().into()];
        args.extend(cli.iter().map(OsString::from));
        let result = expand(args, &command());
        let _ = std::fs::remove_file(&path);
        result
    }

    fn texts(expanded: &Expanded) -> Vec<String> {
        expanded
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn keys_become_flags_before_the_command_line() {
        let yaml = "listen-on: tcp:127.0.0.1:6500\ntoken-source: \"\"\nverify-remote-endpoint: true\nallow-target: [10.0.0.0/8, 'unix:/run/']\nlog-format: console\nlog-name: quictun\n";
        let expanded = run(yaml, &["--token-source", "x"]).unwrap();
        let args = texts(&expanded);
        assert_eq!(args[0], "t");
        assert!(args.contains(&"--listen-on=tcp:127.0.0.1:6500".to_owned()));
        assert!(args.contains(&"--verify-remote-endpoint=true".to_owned()));
        assert!(args.contains(&"--allow-target=10.0.0.0/8".to_owned()));
        assert!(args.contains(&"--allow-target=unix:/run/".to_owned()));
        assert!(args.contains(&"--log-format=text".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--token-source=")));
        assert_eq!(expanded.logging.warnings.len(), 1);
        assert!(expanded.logging.warnings[0].contains("\"log-name\""));
    }

    #[test]
    fn log_output_paths_are_kept_and_the_other_log_keys_named_in_one_warning() {
        let yaml = "log-name: q\nlog-development: false\nlog-output-paths: ./q.log, stdout\nlog-error-output-paths: ./q.error.log\n";
        let logging = run(yaml, &[]).unwrap().logging;
        assert_eq!(logging.output_paths, ["./q.log", "stdout"]);
        assert_eq!(logging.warnings.len(), 1, "{:?}", logging.warnings);
        for key in ["log-name", "log-development", "log-error-output-paths"] {
            assert!(logging.warnings[0].contains(&format!("{key:?}")), "{key}");
        }
        assert!(!logging.warnings[0].contains("log-output-paths"));
        let listed = run("log-output-paths: [/tmp/a.log, \"\", stderr]\n", &[]).unwrap();
        assert_eq!(listed.logging.output_paths, ["/tmp/a.log", "stderr"]);
        assert!(listed.logging.warnings.is_empty());
        assert!(run("log-output-paths: {a: 1}\n", &[]).is_err());
    }

    #[test]
    fn the_command_line_replaces_the_file() {
        let expanded = run(
            "listen-on: tcp:1.1.1.1:1\nallow-target: [10.0.0.0/8]\n",
            &[
                "--listen-on=tcp:2.2.2.2:2",
                "--allow-target",
                "192.0.2.0/24",
            ],
        )
        .unwrap();
        let args = texts(&expanded);
        assert!(!args.contains(&"--listen-on=tcp:1.1.1.1:1".to_owned()));
        assert!(!args.contains(&"--allow-target=10.0.0.0/8".to_owned()));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            run("bogus: 1\n", &[])
                .unwrap_err()
                .to_string()
                .contains("unknown key \"bogus\"")
        );
        assert!(
            run("listen-on: [a, b]\n", &[])
                .unwrap_err()
                .to_string()
                .contains("takes one value")
        );
        assert!(
            run("listen-on: {a: 1}\n", &[])
                .unwrap_err()
                .to_string()
                .contains("must be a text")
        );
        assert!(
            run("- a\n", &[])
                .unwrap_err()
                .to_string()
                .contains("must be a mapping")
        );
        assert!(
            run("a: [\n", &[])
                .unwrap_err()
                .to_string()
                .contains("not valid YAML")
        );
        assert!(run("", &[]).unwrap().args.len() == 3);
    }
}
