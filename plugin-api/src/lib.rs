//! The stable ABI between quic-tun and its plugins.
//!
//! A plugin is a `cdylib` that exports one [`PluginModule`]: its name, whether its calls may
//! block, and a constructor for exactly one of the three plugin kinds:
//!
//! - a **token source** (client side) turns an application's source address into a token;
//! - a **token parser** (server side) turns a token into the address of the target application;
//! - a **protocol discriminator** (both sides) looks at the first bytes of each tunnel and says
//!   which protocol it carries, with properties as a JSON object.
//!
//! Plugin authors implement the plain Rust traits [`TokenSource`], [`TokenParser`] or
//! [`Discriminator`] and export them with [`export_token_source!`], [`export_token_parser!`] or
//! [`export_discriminator!`]. The macros wrap every call in `catch_unwind`, so a panic inside a
//! plugin becomes an error for the one tunnel that triggered it instead of ending the host.
//! Containment covers unwinding panics only: a plugin that aborts or corrupts memory shares the
//! host process's fate.
//!
//! The host checks, when it loads a plugin, that the plugin was built against a compatible
//! version of this crate and that every type crossing the boundary has the layout it expects
//! (`abi_stable`'s layout check).

#![allow(non_local_definitions)]

mod export;
mod guard;

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
};

pub use abi_stable;

/// What the export macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::guard::{Guarded, new_discriminator, new_token_parser, new_token_source};
}

/// The root module every plugin exports.
///
/// Exactly one constructor is `Some`; it decides the plugin's kind.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(option))]
pub struct PluginModule {
    /// A short name for logs, e.g. `Fixed`.
    pub name: RStr<'static>,
    /// Whether the plugin's calls may block (file or network I/O). The host runs such calls on
    /// a bounded pool of threads with a deadline, and others inline.
    pub may_block: bool,
    pub new_token_source:
        Option<extern "C" fn(RStr<'_>, HostLog) -> RResult<TokenSourceBox, RString>>,
    pub new_token_parser:
        Option<extern "C" fn(RStr<'_>, HostLog) -> RResult<TokenParserBox, RString>>,
    #[sabi(last_prefix_field)]
    pub new_discriminator:
        Option<extern "C" fn(RStr<'_>, HostLog) -> RResult<DiscriminatorBox, RString>>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "quictun_plugin";
    const NAME: &'static str = "quictun plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The plugin kinds, as the host names them in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    TokenSource,
    TokenParser,
    Discriminator,
}

impl PluginKind {
    pub fn describe(self) -> &'static str {
        match self {
            PluginKind::TokenSource => "token source",
            PluginKind::TokenParser => "token parser",
            PluginKind::Discriminator => "protocol discriminator",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl PluginModuleRef {
    /// The kind this module provides, from the constructor it exports.
    pub fn kind(self) -> Option<PluginKind> {
        if self.new_token_source().is_some() {
            Some(PluginKind::TokenSource)
        } else if self.new_token_parser().is_some() {
            Some(PluginKind::TokenParser)
        } else if self.new_discriminator().is_some() {
            Some(PluginKind::Discriminator)
        } else {
            None
        }
    }
}

/// Why a plugin call failed.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The input is not acceptable: no token for this client, a token that does not parse.
    Refused,
    /// The plugin could not do its work: an unreachable token service, an unreadable file.
    Failed,
    /// The plugin panicked; the panic was caught at the boundary.
    Panicked,
}

/// The error every plugin call can return.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub kind: FailureKind,
    pub message: RString,
}

impl PluginError {
    /// The input is not acceptable (the host answers "bad token" or refuses the connection).
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Refused,
            message: message.into().into(),
        }
    }

    /// The plugin could not work (the host answers "plugin error").
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Failed,
            message: message.into().into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// Severity of a message a plugin sends to the host's log.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// The host's log, handed to every plugin at construction.
///
/// A plugin has its own copy of `tracing`'s statics, so its own `tracing` events would go
/// nowhere: it logs through this callback, and the host records the message with the plugin's
/// name.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct HostLog {
    pub emit: extern "C" fn(level: LogLevel, plugin: RStr<'_>, message: RStr<'_>),
    pub plugin: RString,
}

impl HostLog {
    /// A log that drops every message, for a plugin's own unit tests.
    pub fn discard(plugin: &str) -> HostLog {
        extern "C" fn drop_message(_: LogLevel, _: RStr<'_>, _: RStr<'_>) {}
        HostLog {
            emit: drop_message,
            plugin: plugin.into(),
        }
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        (self.emit)(level, self.plugin.as_rstr(), message.into());
    }

    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }
}

impl std::fmt::Debug for HostLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLog")
            .field("plugin", &self.plugin)
            .finish()
    }
}

/// Which way bytes flow through a tunnel.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client application towards the server application.
    ClientToServer,
    /// From the server application towards the client application.
    ServerToClient,
}

/// A discriminator's answer after each chunk it is fed.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes to tell yet.
    Undecided,
    /// It is this protocol; more properties may follow.
    AffirmedIncomplete,
    /// It is this protocol and every property is known: stop feeding.
    AffirmedComplete,
    /// It is not this protocol: stop feeding.
    Denied,
}

impl Verdict {
    pub fn is_affirmed(self) -> bool {
        matches!(
            self,
            Verdict::AffirmedIncomplete | Verdict::AffirmedComplete
        )
    }

    /// Whether the discriminator wants more bytes.
    pub fn wants_more(self) -> bool {
        matches!(self, Verdict::Undecided | Verdict::AffirmedIncomplete)
    }
}

// ---- The plain Rust traits plugin authors implement ----

/// Client side: gives the token to send for an application connection.
pub trait TokenSource: Send + Sync + 'static {
    /// Builds the source from its configuration string (`--token-source`).
    fn new(config: &str, log: HostLog) -> Result<Self, String>
    where
        Self: Sized;

    /// The token for a connection from `client_addr`: `IP:PORT` (`[IPv6]:PORT`) for TCP, or
    /// the listener's own `unix:/path` for a UNIX socket.
    fn token(&self, client_addr: &str) -> Result<Vec<u8>, PluginError>;
}

/// Server side: turns a token into the target application's address (`tcp:HOST:PORT` or
/// `unix:/path`).
pub trait TokenParser: Send + Sync + 'static {
    /// Builds the parser from its configuration string (`--token-parser-key`).
    fn new(config: &str, log: HostLog) -> Result<Self, String>
    where
        Self: Sized;

    fn target(&self, token: &[u8]) -> Result<String, PluginError>;
}

/// Both sides: recognises one protocol from the first bytes of a tunnel.
pub trait Discriminator: Send + Sync + 'static {
    type Session: DiscriminatorSession;

    /// Builds the discriminator from its configuration string.
    fn new(config: &str, log: HostLog) -> Result<Self, String>
    where
        Self: Sized;

    /// The protocol's name as shown in the tunnel list, e.g. `spice`.
    fn protocol(&self) -> String;

    /// A fresh state for one tunnel.
    fn session(&self) -> Self::Session;
}

/// One tunnel's discriminator state.
pub trait DiscriminatorSession: Send + 'static {
    /// Feeds the next bytes seen in `direction`. Each direction's bytes arrive in order.
    fn feed(&mut self, direction: Direction, data: &[u8]) -> Verdict;

    /// The properties found so far, as a JSON object, or `None`.
    fn properties(&self) -> Option<String>;
}

// ---- The FFI-safe trait objects the host calls ----

/// FFI form of [`TokenSource`].
#[sabi_trait]
pub trait FfiTokenSource: Send + Sync {
    #[sabi(last_prefix_field)]
    fn token(&self, client_addr: RStr<'_>) -> RResult<RVec<u8>, PluginError>;
}

/// FFI form of [`TokenParser`].
#[sabi_trait]
pub trait FfiTokenParser: Send + Sync {
    #[sabi(last_prefix_field)]
    fn target(&self, token: RSlice<'_, u8>) -> RResult<RString, PluginError>;
}

/// FFI form of [`Discriminator`].
#[sabi_trait]
pub trait FfiDiscriminator: Send + Sync {
    fn protocol(&self) -> RString;
    #[sabi(last_prefix_field)]
    fn session(&self) -> RResult<DiscriminatorSessionBox, PluginError>;
}

/// FFI form of [`DiscriminatorSession`].
#[sabi_trait]
pub trait FfiDiscriminatorSession: Send {
    fn feed(&mut self, direction: Direction, data: RSlice<'_, u8>)
    -> RResult<Verdict, PluginError>;
    /// A JSON object, or an empty string when there are no properties yet.
    #[sabi(last_prefix_field)]
    fn properties(&self) -> RResult<RString, PluginError>;
}

pub type TokenSourceBox = FfiTokenSource_TO<'static, RBox<()>>;
pub type TokenParserBox = FfiTokenParser_TO<'static, RBox<()>>;
pub type DiscriminatorBox = FfiDiscriminator_TO<'static, RBox<()>>;
pub type DiscriminatorSessionBox = FfiDiscriminatorSession_TO<'static, RBox<()>>;
