//! Loading plugins and calling them safely (SPEC §5).
//!
//! A plugin argument containing `/` or ending in `.so` is a path; anything else is a built-in
//! name, found as `libquictun_plugin_<name>.so` in `--plugin-dir`, `$QUICTUN_PLUGIN_DIR`, the
//! executable's directory and `<exe dir>/../lib/quictun/plugins`. Each library is loaded on its
//! own (never through `abi_stable`'s one-module-per-type cache), so several plugins of one kind
//! live side by side.
//!
//! Calls into plugins that may block run on tokio's blocking pool, at most
//! [`MAX_BLOCKING_CALLS`] at a time, each with a deadline after which the tunnel fails: a hung
//! plugin pins a bounded number of threads and never an async worker.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::std_types::{RResult, RStr, RString};
use quictun_plugin_api::{
    DiscriminatorBox, DiscriminatorSessionBox, FailureKind, HostLog, LogLevel, PluginError,
    PluginKind, PluginModuleRef, TokenParserBox, TokenSourceBox,
};
use tokio::sync::Semaphore;

/// Plugin calls that may block and run at the same time, across the process.
pub const MAX_BLOCKING_CALLS: usize = 64;
/// How long one plugin call may take before its tunnel fails.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);

static BLOCKING_CALLS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(MAX_BLOCKING_CALLS)));

/// Why a plugin could not be loaded or built. Each message names the plugin and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot find plugin {name:?} ({file}); looked in: {}", list(searched))]
    NotFound {
        name: String,
        file: String,
        searched: Vec<PathBuf>,
    },
    #[error("cannot load {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("cannot load {}: not a quictun plugin", path.display())]
    NotAPlugin { path: PathBuf },
    #[error("cannot load {}: it is a {found} plugin, not a {expected}", path.display())]
    WrongKind {
        path: PathBuf,
        expected: PluginKind,
        found: String,
    },
    #[error(
        "cannot load {}: built for plugin ABI {found}, this quictun has {expected} (rebuild the plugin against quictun-plugin-api {expected})",
        path.display()
    )]
    Version {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot load {}: plugin ABI layout mismatch: {detail}", path.display())]
    Layout { path: PathBuf, detail: String },
    #[error("plugin {name} ({}) failed to start: {reason}", path.display())]
    Init {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let shown: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Where built-in plugins are looked for, in order.
pub fn search_dirs(plugin_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    dirs.extend(plugin_dir.map(Path::to_path_buf));
    if let Some(dir) = std::env::var_os("QUICTUN_PLUGIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let installed = exe_dir.join("../lib/quictun/plugins");
        dirs.push(exe_dir);
        dirs.push(installed);
    }
    dirs
}

/// Turns a plugin argument into the file to load.
pub fn resolve(arg: &str, plugin_dir: Option<&Path>) -> Result<PathBuf, LoadError> {
    if arg.contains('/') || arg.ends_with(".so") {
        // dlopen looks a bare file name up in system paths, not here: make it absolute.
        return std::fs::canonicalize(arg).map_err(|error| LoadError::Open {
            path: PathBuf::from(arg),
            reason: error.to_string(),
        });
    }
    let file = format!("libquictun_plugin_{}.so", arg.to_ascii_lowercase());
    let searched = search_dirs(plugin_dir);
    searched
        .iter()
        .map(|dir| dir.join(&file))
        .find(|candidate| candidate.is_file())
        .map(|found| std::fs::canonicalize(&found).unwrap_or(found))
        .ok_or(LoadError::NotFound {
            name: arg.to_owned(),
            file,
            searched,
        })
}

/// A loaded plugin library, checked to be of the expected kind.
#[derive(Clone, Copy)]
struct Module {
    root: PluginModuleRef,
}

fn load_module(
    arg: &str,
    plugin_dir: Option<&Path>,
    expected: PluginKind,
) -> Result<(Module, PathBuf), LoadError> {
    let path = resolve(arg, plugin_dir)?;
    let root = lib_header_from_path(&path)
        .and_then(|header| header.init_root_module::<PluginModuleRef>())
        .map_err(|error| library_error(&path, error))?;
    match root.kind() {
        Some(kind) if kind == expected => Ok((Module { root }, path)),
        Some(kind) => Err(LoadError::WrongKind {
            path,
            expected,
            found: kind.to_string(),
        }),
        None => Err(LoadError::WrongKind {
            path,
            expected,
            found: "empty".into(),
        }),
    }
}

fn library_error(path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_path_buf();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Version {
            path,
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
        },
        LibraryError::AbiInstability(detail) => layout_error(path, &detail.to_string()),
        other => layout_error(path, &other.to_string()),
    }
}

/// A layout report runs to a thousand lines. Its `Error:` lines, each followed by
/// `Expected:` and `Found:` values, say what differs; a package version difference is an ABI
/// version mismatch.
fn layout_error(path: PathBuf, report: &str) -> LoadError {
    let differences = layout_differences(report);
    if let Some(version) = differences
        .iter()
        .find(|d| d.reason == "incompatible package versions")
    {
        return LoadError::Version {
            path,
            expected: version.expected.clone(),
            found: version.found.clone(),
        };
    }
    let mut lines: Vec<String> = differences.iter().map(ToString::to_string).collect();
    lines.dedup();
    let detail = match lines.len() {
        0 => report
            .lines()
            .next()
            .unwrap_or("unknown difference")
            .to_owned(),
        _ => lines.into_iter().take(3).collect::<Vec<_>>().join("; "),
    };
    LoadError::Layout { path, detail }
}

/// One `Error:` entry of a layout report.
#[derive(Debug, PartialEq)]
struct Difference {
    reason: String,
    expected: String,
    found: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (expected {}, found {})",
            self.reason, self.expected, self.found
        )
    }
}

fn layout_differences(report: &str) -> Vec<Difference> {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    // The value on the line after `label`, within the few lines that follow an `Error:`.
    let value_after = |label: &str, from: usize| {
        let window = lines.get(from..(from + 4).min(lines.len()))?;
        let at = window.iter().position(|line| *line == label)?;
        window.get(at + 1).map(|value| value.to_string())
    };
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let reason = line.strip_prefix("Error:")?.trim().to_owned();
            let expected = value_after("Expected:", i + 1).unwrap_or_default();
            let found = value_after("Found:", i + 1).unwrap_or_default();
            Some(Difference {
                reason,
                expected,
                found,
            })
        })
        .collect()
}

/// The log callback handed to plugins: their messages land in our log with their name.
extern "C" fn plugin_log(level: LogLevel, plugin: RStr<'_>, message: RStr<'_>) {
    // A panic must not unwind out of an extern "C" function.
    let _ = std::panic::catch_unwind(|| {
        let (plugin, message) = (plugin.as_str(), message.as_str());
        match level {
            LogLevel::Error => tracing::error!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
        }
    });
}

fn host_log(name: &str) -> HostLog {
    HostLog {
        emit: plugin_log,
        plugin: name.into(),
    }
}

/// What every host-side plugin wrapper knows about its plugin.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub path: PathBuf,
    pub may_block: bool,
}

fn info(module: Module, path: PathBuf) -> PluginInfo {
    PluginInfo {
        name: module.root.name().as_str().to_owned(),
        path,
        may_block: module.root.may_block(),
    }
}

/// Runs a plugin call: inline when the plugin never blocks, otherwise on the blocking pool
/// with a deadline.
async fn call<T: Send + 'static>(
    info: &PluginInfo,
    work: impl FnOnce() -> RResult<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    if !info.may_block {
        return work().into_result();
    }
    let timed_out = || {
        PluginError::failed(format!(
            "plugin {} did not answer within {CALL_DEADLINE:?}",
            info.name
        ))
    };
    let run = async {
        let permit = BLOCKING_CALLS
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
    };
    match tokio::time::timeout(CALL_DEADLINE, run).await {
        Err(_) => Err(timed_out()),
        Ok(Err(join_error)) => Err(PluginError {
            kind: FailureKind::Panicked,
            message: format!("plugin {} call failed: {join_error}", info.name).into(),
        }),
        Ok(Ok(result)) => result.into_result(),
    }
}

/// A loaded plugin: what is known about it, and its object, shared by every call.
struct Loaded<B> {
    info: PluginInfo,
    object: Arc<B>,
}

impl<B> Loaded<B> {
    /// Loads a plugin of `kind` and builds its object from `config`.
    fn load(
        arg: &str,
        config: &str,
        plugin_dir: Option<&Path>,
        kind: PluginKind,
        constructor: impl FnOnce(PluginModuleRef) -> Option<Constructor<B>>,
    ) -> Result<Self, LoadError> {
        let (module, path) = load_module(arg, plugin_dir, kind)?;
        let info = info(module, path);
        let build = constructor(module.root).ok_or_else(|| LoadError::WrongKind {
            path: info.path.clone(),
            expected: kind,
            found: "different".into(),
        })?;
        let object = build(config.into(), host_log(&info.name))
            .into_result()
            .map_err(|reason| LoadError::Init {
                name: info.name.clone(),
                path: info.path.clone(),
                reason: reason.into(),
            })?;
        Ok(Loaded {
            info,
            object: Arc::new(object),
        })
    }
}

impl<B> Clone for Loaded<B> {
    fn clone(&self) -> Self {
        Loaded {
            info: self.info.clone(),
            object: self.object.clone(),
        }
    }
}

/// Plugin objects have no useful `Debug`: show what was loaded from where.
impl<B> std::fmt::Debug for Loaded<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info.fmt(f)
    }
}

type Constructor<B> = extern "C" fn(RStr<'_>, HostLog) -> RResult<B, RString>;

/// A loaded token-source plugin (client side).
#[derive(Clone, Debug)]
pub struct TokenSource(Loaded<TokenSourceBox>);

impl TokenSource {
    /// Loads `arg` (a built-in name or a path) and builds it from `config`.
    pub fn load(arg: &str, config: &str, plugin_dir: Option<&Path>) -> Result<Self, LoadError> {
        let kind = PluginKind::TokenSource;
        Loaded::load(arg, config, plugin_dir, kind, |m| m.new_token_source()).map(Self)
    }

    pub fn info(&self) -> &PluginInfo {
        &self.0.info
    }

    /// The token for a connection from `client_addr`.
    pub async fn token(&self, client_addr: &str) -> Result<Vec<u8>, PluginError> {
        let plugin = self.0.object.clone();
        let client_addr = client_addr.to_owned();
        call(self.info(), move || {
            plugin.token(client_addr.as_str().into()).map(Into::into)
        })
        .await
    }
}

/// A loaded token-parser plugin (server side).
#[derive(Clone, Debug)]
pub struct TokenParser(Loaded<TokenParserBox>);

impl TokenParser {
    /// Loads `arg` (a built-in name or a path) and builds it from `config`.
    pub fn load(arg: &str, config: &str, plugin_dir: Option<&Path>) -> Result<Self, LoadError> {
        let kind = PluginKind::TokenParser;
        Loaded::load(arg, config, plugin_dir, kind, |m| m.new_token_parser()).map(Self)
    }

    pub fn info(&self) -> &PluginInfo {
        &self.0.info
    }

    /// The target address a token names, as text.
    pub async fn target(&self, token: Vec<u8>) -> Result<String, PluginError> {
        let plugin = self.0.object.clone();
        call(self.info(), move || {
            plugin.target(token.as_slice().into()).map(Into::into)
        })
        .await
    }
}

/// A loaded protocol-discriminator plugin (both sides).
#[derive(Clone, Debug)]
pub struct Discriminator {
    plugin: Loaded<DiscriminatorBox>,
    protocol: String,
}

impl Discriminator {
    /// Loads `NAME_OR_PATH[=CONFIG]`.
    pub fn load(arg: &str, plugin_dir: Option<&Path>) -> Result<Self, LoadError> {
        let (name, config) = arg.split_once('=').unwrap_or((arg, ""));
        let kind = PluginKind::Discriminator;
        let plugin = Loaded::load(name, config, plugin_dir, kind, |m| m.new_discriminator())?;
        let protocol = plugin.object.protocol().into();
        Ok(Self { plugin, protocol })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.plugin.info
    }

    /// The protocol this discriminator recognises, e.g. `spice`.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// A fresh state for one tunnel.
    pub fn session(&self) -> Result<DiscriminatorSessionBox, PluginError> {
        self.plugin.object.session().into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reports_are_boiled_down_to_their_differences() {
        let report = "header\n\nError:incompatible package versions\nExpected:\n    0.1.0\nFound:\n    0.2.0\n1 error(s)inside:\n";
        let error = layout_error(PathBuf::from("/x.so"), report);
        assert_eq!(
            error.to_string(),
            "cannot load /x.so: built for plugin ABI 0.2.0, this quictun has 0.1.0 (rebuild the plugin against quictun-plugin-api 0.1.0)"
        );
        let report = "Error:mismatched type\nExpected:\n  A\nFound:\n  B\nError:mismatched type\nExpected:\n  A\nFound:\n  B\n";
        let error = layout_error(PathBuf::from("/x.so"), report);
        assert_eq!(
            error.to_string(),
            "cannot load /x.so: plugin ABI layout mismatch: mismatched type (expected A, found B)"
        );
        let error = layout_error(PathBuf::from("/x.so"), "");
        assert!(error.to_string().ends_with("unknown difference"), "{error}");
    }
}
