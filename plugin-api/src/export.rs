//! The export macros: one line in a plugin crate turns a type into a loadable plugin.
//!
//! ```ignore
//! quictun_plugin_api::export_token_source!(MySource, name = "Mine", may_block = false);
//! ```
//!
//! Each macro emits the library header the host looks up (the same symbol and layout constants
//! `abi_stable`'s `#[export_root_module]` emits) with constructors wrapped against panics.

/// Exports a [`TokenSource`](crate::TokenSource) implementation as this library's plugin.
#[macro_export]
macro_rules! export_token_source {
    ($ty:ty, name = $name:expr, may_block = $may_block:expr $(,)?) => {
        $crate::__export_plugin_module! {
            name = $name,
            may_block = $may_block,
            source = ::core::option::Option::Some($crate::__private::new_token_source::<$ty>),
            parser = ::core::option::Option::None,
            discriminator = ::core::option::Option::None,
        }
    };
}

/// Exports a [`TokenParser`](crate::TokenParser) implementation as this library's plugin.
#[macro_export]
macro_rules! export_token_parser {
    ($ty:ty, name = $name:expr, may_block = $may_block:expr $(,)?) => {
        $crate::__export_plugin_module! {
            name = $name,
            may_block = $may_block,
            source = ::core::option::Option::None,
            parser = ::core::option::Option::Some($crate::__private::new_token_parser::<$ty>),
            discriminator = ::core::option::Option::None,
        }
    };
}

/// Exports a [`Discriminator`](crate::Discriminator) implementation as this library's plugin.
#[macro_export]
macro_rules! export_discriminator {
    ($ty:ty, name = $name:expr, may_block = $may_block:expr $(,)?) => {
        $crate::__export_plugin_module! {
            name = $name,
            may_block = $may_block,
            source = ::core::option::Option::None,
            parser = ::core::option::Option::None,
            discriminator = ::core::option::Option::Some($crate::__private::new_discriminator::<$ty>),
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin_module {
    (
        name = $name:expr,
        may_block = $may_block:expr,
        source = $source:expr,
        parser = $parser:expr,
        discriminator = $discriminator:expr,
    ) => {
        #[doc(hidden)]
        pub extern "C" fn __quictun_plugin_root() -> $crate::abi_stable::library::RootModuleResult {
            fn module() -> $crate::PluginModuleRef {
                use $crate::abi_stable::prefix_type::PrefixTypeTrait;
                $crate::PluginModule {
                    name: $crate::abi_stable::std_types::RStr::from_str($name),
                    may_block: $may_block,
                    new_token_source: $source,
                    new_token_parser: $parser,
                    new_discriminator: $discriminator,
                }
                .leak_into_prefix()
            }
            // The loader abi_stable's `#[export_root_module]` expands to: it builds the
            // module under `catch_unwind`, registers it as this library's root module, and
            // erases its type for the header. It is public but hidden from abi_stable's docs,
            // so the workspace pins abi_stable's exact version.
            $crate::abi_stable::library::__call_root_module_loader(module)
        }

        // The symbol name is `abi_stable::library::ROOT_MODULE_LOADER_NAME` (checked by a test
        // in quictun-plugin-api).
        //
        // This is what abi_stable's `#[export_root_module]` attribute expands to; we write it
        // out because that attribute cannot wrap the constructor in `catch_unwind`.
        //
        // SAFETY: `export_name` makes this the one symbol of that name in the library (a
        // second `export_plugin!` in one crate fails to link), and its type is the `LibHeader`
        // the host's loader reads through it. `from_constructor` requires that the
        // constructor return the root module of the type given (`PluginModuleRef`, by the
        // signature of `__quictun_plugin_root`) and that the header be built once, in a
        // static: both hold here.
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __QUICTUN_PLUGIN_HEADER: $crate::abi_stable::library::LibHeader = unsafe {
            $crate::abi_stable::library::LibHeader::from_constructor::<$crate::PluginModuleRef>(
                __quictun_plugin_root,
                $crate::abi_stable::library::CheckTypeLayout::Yes,
            )
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_is_the_one_abi_stable_looks_up() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
