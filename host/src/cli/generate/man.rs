//! The man page's own sections, which clap cannot derive from the flags: EXAMPLES (real
//! command lines of the binary), FILES and ENVIRONMENT.

use std::io::{self, Write};

/// The sections after OPTIONS for one binary.
pub struct Extra {
    /// What each example does, and its command line.
    examples: &'static [(&'static str, &'static str)],
    /// A path and what it is.
    files: &'static [(&'static str, &'static str)],
}

impl Extra {
    /// The sections of the binary named `name` (none of its own for another name).
    pub fn of(name: &str) -> Extra {
        match name {
            "quictun-server" => SERVER,
            "quictun-client" => CLIENT,
            _ => Extra {
                examples: &[],
                files: STATE,
            },
        }
    }
}

const SERVER: Extra = Extra {
    examples: &[
        (
            "Accept QUIC on UDP port 7500 and relay to the SSH server of this machine only; the first start generates the certificate and logs its fingerprint:",
            "quictun-server --listen-on 0.0.0.0:7500 --allow-target 127.0.0.1:22",
        ),
        (
            "Relay to VNC or SPICE displays of a private network, with tokens in base64:",
            "quictun-server --allow-target 10.0.0.0/8:5900-5999 --token-parser-key base64",
        ),
        (
            "Run from the configuration file the systemd unit uses:",
            "quictun-server --config /etc/quictun/quictun-server.yaml",
        ),
        (
            "Write a cluster key that only its owner may read, once for all instances of a service:",
            "(umask 077; quictun-server --generate cluster-key > /etc/quictun/cluster.key)",
        ),
        (
            "Run instance 1 of several behind a UDP load balancer (docs/SCALING.md): every instance has the same certificate and cluster key, and an id of its own:",
            "quictun-server --server-id 1 --cluster-key-file /etc/quictun/cluster.key --cert-file /etc/quictun/server.pem --key-file /etc/quictun/server.key --allow-target 10.0.0.0/8:22",
        ),
    ],
    files: &[
        STATE[0],
        (
            "STATE_DIR/server-identity.pem",
            "The certificate and key the server generates at its first start when no --cert-file is given; its fingerprint is logged at every start.",
        ),
        (
            "/etc/quictun/quictun-server.yaml",
            "The configuration the systemd unit passes with --config (keys are the long flag names).",
        ),
        PLUGINS,
    ],
};

const CLIENT: Extra = Extra {
    examples: &[
        (
            "Try the server first: connect once, print its fingerprint, protocol and round-trip time, and ask it to accept a token:",
            "quictun-client --check --server-endpoint tunnel.example:7500 --token-source tcp:127.0.0.1:22",
        ),
        (
            "Carry connections to local port 6500 to the server's SSH port, pinning the fingerprint the server logged:",
            "quictun-client --listen-on tcp:127.0.0.1:6500 --server-endpoint tunnel.example:7500 --token-source tcp:127.0.0.1:22 --server-cert-fingerprint sha256:HEX",
        ),
        ("Then, in another terminal:", "ssh -p 6500 user@127.0.0.1"),
        (
            "Take a per-application token from a file of CLIENT_IP TOKEN lines:",
            "quictun-client --server-endpoint tunnel.example:7500 --token-source-plugin File --token-source /etc/quictun/tokens",
        ),
        (
            "Run from the configuration file the systemd unit uses:",
            "quictun-client --config /etc/quictun/quictun-client.yaml",
        ),
    ],
    files: &[
        STATE[0],
        (
            "STATE_DIR/known_hosts",
            "The server certificates this client trusted on first use, one per server; a changed certificate is refused until its line is removed.",
        ),
        (
            "/etc/quictun/quictun-client.yaml",
            "The configuration the systemd unit passes with --config (keys are the long flag names).",
        ),
        PLUGINS,
    ],
};

const STATE: &[(&str, &str)] = &[(
    "$XDG_DATA_HOME/quictun, or ~/.local/share/quictun",
    "The state directory (STATE_DIR) unless --state-dir names another: created with mode 0700, refused when another user owns it or others may write to it. The systemd units use /var/lib/quictun-server and /var/lib/quictun-client.",
)];

const PLUGINS: (&str, &str) = (
    "EXE_DIR/../lib/quictun/plugins/libquictun_plugin_NAME.so",
    "Where a plugin given by name is found last, after --plugin-dir, $QUICTUN_PLUGIN_DIR and the executable's own directory.",
);

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "QUICTUN_PLUGIN_DIR",
        "A directory searched for plugins given by name (libquictun_plugin_NAME.so), after --plugin-dir. No other QUICTUN_ variable is read.",
    ),
    (
        "XDG_DATA_HOME",
        "The default state directory is $XDG_DATA_HOME/quictun (~/.local/share/quictun when unset).",
    ),
    (
        "HOME",
        "Gives ~/.local/share/quictun when XDG_DATA_HOME is unset.",
    ),
];

/// Writes EXAMPLES, FILES and ENVIRONMENT as roff.
pub fn render(extra: &Extra, out: &mut dyn Write) -> io::Result<()> {
    if !extra.examples.is_empty() {
        writeln!(out, ".SH EXAMPLES")?;
        for (what, command) in extra.examples {
            writeln!(
                out,
                ".PP\n{}\n.PP\n.RS 4\n.nf\n{}\n.fi\n.RE",
                text(what),
                text(command)
            )?;
        }
    }
    writeln!(out, ".SH FILES")?;
    for entry in extra.files {
        tagged(entry, out)?;
    }
    writeln!(out, ".SH ENVIRONMENT")?;
    for entry in ENVIRONMENT {
        tagged(entry, out)?;
    }
    Ok(())
}

/// A `.TP` paragraph: the name in bold, then what it is.
fn tagged((name, what): &(&str, &str), out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, ".TP\n\\fB{}\\fR\n{}", text(name), text(what))
}

/// Text safe in roff: backslashes and hyphens escaped, no line starting with a control
/// character.
fn text(plain: &str) -> String {
    let escaped = plain.replace('\\', "\\e").replace('-', "\\-");
    match escaped.starts_with(['.', '\'']) {
        true => format!("\\&{escaped}"),
        false => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(name: &str) -> String {
        let mut out = Vec::new();
        render(&Extra::of(name), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_binary_has_examples_of_itself_files_and_environment() {
        for name in ["quictun-server", "quictun-client"] {
            let page = rendered(name);
            let escaped = name.replace('-', "\\-");
            assert!(page.contains(&format!(".nf\n{escaped} \\-\\-")), "{page}");
            assert!(page.contains("QUICTUN_PLUGIN_DIR"), "{page}");
            assert!(page.contains("XDG_DATA_HOME"), "{page}");
            assert!(
                page.contains(&format!("/etc/quictun/{escaped}.yaml")),
                "{page}"
            );
        }
        assert!(rendered("quictun-client").contains("known_hosts"));
        assert!(rendered("quictun-server").contains("server\\-identity.pem"));
    }

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(text(".hidden"), "\\&.hidden");
        assert_eq!(text("a\\b-c"), "a\\eb\\-c");
    }
}
