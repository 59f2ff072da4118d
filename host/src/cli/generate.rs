//! Shell completions and man pages, generated from a binary's own clap definition.
//!
//! Each binary takes `--generate bash|zsh|fish|elvish|powershell|man` that prints one of them
//! and exits, so what is installed always matches the flags of the binary installed beside it
//! (`scripts/install.sh` uses it). The flag is listed in `--help`, left out of the man page
//! and the completions themselves, and must be given alone. `quictun-server` also prints a
//! new cluster key with `--generate cluster-key` (SPEC §12).
//!
//! The man page is clap's NAME, SYNOPSIS, DESCRIPTION and OPTIONS followed by sections of our
//! own ([`man`]): EXAMPLES, FILES and ENVIRONMENT.

use std::io::{self, Write};

use clap::builder::TypedValueParser;
use clap::{Arg, ArgMatches, Command, ValueEnum};
use clap_complete::Shell;

use crate::quic::cluster_key::ClusterKey;

mod man;

/// The flag's name.
const FLAG: &str = "generate";

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
    /// A man page (roff), for section 1.
    Man,
    /// A new cluster key: 64 hex digits from the OS's random generator (quictun-server).
    ClusterKey,
}

/// The binary that generates cluster keys.
const SERVER: &str = "quictun-server";

/// `command` with the `--generate` flag added: on quictun-server, `cluster-key` as well.
pub fn with_flag(command: Command) -> Command {
    let server = command.get_name() == SERVER;
    let offered = Output::value_variants()
        .iter()
        .filter(|output| server || **output != Output::ClusterKey)
        .filter_map(|output| output.to_possible_value());
    let parser = clap::builder::PossibleValuesParser::new(offered)
        .try_map(|name: String| Output::from_str(&name, false));
    let (value_name, help) = match server {
        true => (
            "SHELL|man|cluster-key",
            "Print shell completions (bash, zsh, fish, elvish, powershell), the man page (man) or a new cluster key (cluster-key), then exit",
        ),
        false => (
            "SHELL|man",
            "Print shell completions (bash, zsh, fish, elvish, powershell) or the man page (man), then exit",
        ),
    };
    command.arg(
        Arg::new(FLAG)
            .long(FLAG)
            .value_name(value_name)
            .value_parser(parser)
            .exclusive(true)
            .help(help),
    )
}

/// What was asked for with `--generate`, if anything.
pub fn requested(matches: &ArgMatches) -> Option<Output> {
    matches.get_one::<Output>(FLAG).copied()
}

/// Writes the completions or the man page of `command` (without `--generate`) to `out`.
pub fn write(output: Output, mut command: Command, out: &mut dyn Write) -> io::Result<()> {
    let name = command.get_name().to_owned();
    let shell = match output {
        Output::Man => return man_page(command, out),
        Output::ClusterKey => return cluster_key(out),
        Output::Bash => Shell::Bash,
        Output::Zsh => Shell::Zsh,
        Output::Fish => Shell::Fish,
        Output::Elvish => Shell::Elvish,
        Output::Powershell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut command, name, out);
    Ok(())
}

/// A new cluster key and a newline, for `(umask 077; quictun-server --generate cluster-key >
/// FILE)`.
fn cluster_key(out: &mut dyn Write) -> io::Result<()> {
    let key = ClusterKey::generate()
        .map_err(|_| io::Error::other("the operating system gave no random bytes"))?;
    writeln!(out, "{}", key.to_hex())
}

/// The man page: clap's sections, then EXAMPLES, FILES, ENVIRONMENT, and the version.
fn man_page(command: Command, out: &mut dyn Write) -> io::Result<()> {
    let extra = man::Extra::of(command.get_name());
    let page = clap_mangen::Man::new(command);
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    man::render(&extra, out)?;
    page.render_version_section(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command::new("quictun-demo")
            .version("1.2.3")
            .about("Demo endpoint")
            .arg(
                Arg::new("listen-on")
                    .long("listen-on")
                    .help("Where to listen"),
            )
            .arg(Arg::new("server").long("server").required(true))
    }

    fn generated(output: Output) -> String {
        let mut out = Vec::new();
        write(output, command(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_flag_is_listed_and_alone_it_needs_no_required_flag() {
        let matches = with_flag(command())
            .try_get_matches_from(["quictun-demo", "--generate", "zsh"])
            .unwrap();
        assert_eq!(requested(&matches), Some(Output::Zsh));
        let help = with_flag(command()).render_long_help().to_string();
        assert!(help.contains("--generate <SHELL|man>"), "{help}");
        let error = with_flag(command())
            .try_get_matches_from(["quictun-demo", "--generate", "man", "--server", "x"])
            .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        let error = with_flag(command())
            .try_get_matches_from(["quictun-demo", "--generate", "tcsh"])
            .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn only_the_server_generates_cluster_keys() {
        let error = with_flag(command())
            .try_get_matches_from(["quictun-demo", "--generate", "cluster-key"])
            .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
        let server = command().name(SERVER);
        let matches = with_flag(server.clone())
            .try_get_matches_from([SERVER, "--generate", "cluster-key"])
            .unwrap();
        assert_eq!(requested(&matches), Some(Output::ClusterKey));
        let help = with_flag(server.clone()).render_long_help().to_string();
        assert!(
            help.contains("--generate <SHELL|man|cluster-key>"),
            "{help}"
        );
        let mut out = Vec::new();
        write(Output::ClusterKey, server, &mut out).unwrap();
        let key = String::from_utf8(out).unwrap();
        assert_eq!(key.len(), 65, "{key}");
        assert!(key.ends_with('\n'));
        assert!(ClusterKey::parse(&key).is_ok(), "{key}");
    }

    #[test]
    fn completions_name_the_flags() {
        for output in [Output::Bash, Output::Zsh, Output::Fish] {
            let text = generated(output);
            assert!(text.contains("listen-on"), "{output:?}: {text}");
            assert!(text.contains("quictun-demo"), "{output:?}: {text}");
            assert!(!text.contains("generate"), "{output:?}: {text}");
        }
    }

    #[test]
    fn the_man_page_is_roff_with_the_flags_and_version() {
        let page = generated(Output::Man);
        assert!(page.contains(".TH quictun-demo 1"), "{page}");
        assert!(page.contains("listen\\-on"), "{page}");
        assert!(page.contains("Where to listen"), "{page}");
        assert!(page.contains("1.2.3"), "{page}");
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "FILES",
            "ENVIRONMENT",
        ] {
            assert!(
                page.contains(&format!(".SH {section}\n")),
                "{section}: {page}"
            );
        }
        // Examples are written for the two binaries only (man.rs).
        assert!(!page.contains(".SH EXAMPLES"), "{page}");
        assert!(!page.contains("generate"), "{page}");
    }
}
