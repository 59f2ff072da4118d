//! The plugin side of the boundary: adapters from the plain traits to the FFI trait objects.
//!
//! Every call that crosses into plugin code runs inside `catch_unwind`. A panic unwinding
//! through an `extern "C"` function would end the host, so it is turned into a
//! [`FailureKind::Panicked`] error here, on the plugin's side, before it can reach the boundary.

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RSlice, RStr, RString, RVec},
};

use crate::{
    Direction, Discriminator, DiscriminatorBox, DiscriminatorSession, DiscriminatorSessionBox,
    FailureKind, FfiDiscriminator, FfiDiscriminator_TO, FfiDiscriminatorSession,
    FfiDiscriminatorSession_TO, FfiTokenParser, FfiTokenParser_TO, FfiTokenSource,
    FfiTokenSource_TO, HostLog, PluginError, TokenParser, TokenParserBox, TokenSource,
    TokenSourceBox, Verdict,
};

/// A plugin object behind the boundary. Only the export macros name it.
pub struct Guarded<T>(T);

/// Runs plugin code, turning a panic into an error that names it.
fn guard<R>(call: impl FnOnce() -> Result<R, PluginError>) -> RResult<R, PluginError> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(error)) => RErr(error),
        Err(payload) => RErr(PluginError {
            kind: FailureKind::Panicked,
            message: format!("plugin panicked: {}", panic_message(&*payload)).into(),
        }),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Runs a plugin's constructor, turning its error or panic into one line of text.
fn construct<T, B>(
    build: impl FnOnce() -> Result<T, String>,
    wrap: impl FnOnce(T) -> B,
) -> RResult<B, RString> {
    match guard(|| build().map_err(PluginError::failed)) {
        ROk(value) => ROk(wrap(value)),
        RErr(error) => RErr(error.message),
    }
}

impl<T: TokenSource> FfiTokenSource for Guarded<T> {
    fn token(&self, client_addr: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard(|| self.0.token(client_addr.as_str()).map(RVec::from))
    }
}

impl<T: TokenParser> FfiTokenParser for Guarded<T> {
    fn target(&self, token: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        guard(|| self.0.target(token.as_slice()).map(RString::from))
    }
}

impl<T: Discriminator> FfiDiscriminator for Guarded<T> {
    fn protocol(&self) -> RString {
        match guard(|| Ok(self.0.protocol())) {
            ROk(name) => name.into(),
            RErr(_) => RString::from("unknown"),
        }
    }

    fn session(&self) -> RResult<DiscriminatorSessionBox, PluginError> {
        guard(|| {
            let session = Guarded(self.0.session());
            Ok(FfiDiscriminatorSession_TO::from_value(session, TD_Opaque))
        })
    }
}

impl<S: DiscriminatorSession> FfiDiscriminatorSession for Guarded<S> {
    fn feed(
        &mut self,
        direction: Direction,
        data: RSlice<'_, u8>,
    ) -> RResult<Verdict, PluginError> {
        guard(|| Ok(self.0.feed(direction, data.as_slice())))
    }

    fn properties(&self) -> RResult<RString, PluginError> {
        guard(|| Ok(self.0.properties().unwrap_or_default().into()))
    }
}

/// The constructor a token-source plugin exports.
pub extern "C" fn new_token_source<T: TokenSource>(
    config: RStr<'_>,
    log: HostLog,
) -> RResult<TokenSourceBox, RString> {
    construct(
        || T::new(config.as_str(), log),
        |value| FfiTokenSource_TO::from_value(Guarded(value), TD_Opaque),
    )
}

/// The constructor a token-parser plugin exports.
pub extern "C" fn new_token_parser<T: TokenParser>(
    config: RStr<'_>,
    log: HostLog,
) -> RResult<TokenParserBox, RString> {
    construct(
        || T::new(config.as_str(), log),
        |value| FfiTokenParser_TO::from_value(Guarded(value), TD_Opaque),
    )
}

/// The constructor a discriminator plugin exports.
pub extern "C" fn new_discriminator<T: Discriminator>(
    config: RStr<'_>,
    log: HostLog,
) -> RResult<DiscriminatorBox, RString> {
    construct(
        || T::new(config.as_str(), log),
        |value| FfiDiscriminator_TO::from_value(Guarded(value), TD_Opaque),
    )
}
