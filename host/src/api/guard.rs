//! Which requests the REST API answers: those whose `Host` names this machine's loopback
//! (`localhost`, 127.0.0.0/8, `[::1]`) or a host the operator allowed with
//! `--httpd-allowed-host`. Others get 421 Misdirected Request.
//!
//! This is the defence against DNS rebinding: a web page the operator opens can point its own
//! name at 127.0.0.1 and so send requests to the API's port, but the browser still names the
//! page's host in `Host`. Without this check the page could read `/tunnels` and close
//! tunnels. It is no authentication: any local process can still use the API.
//!
//! The host is compared exactly, after parsing, never by prefix or suffix: an address is one
//! address in the canonical dotted form (`127.1` or `0x7f000001` are names here, and refused,
//! though some resolvers read them as addresses — browsers send 127.0.0.1 for them), and a
//! name is one name, case-insensitively (`localhost.` with its root dot is another name).

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::wire::addr::Host;

/// A host besides loopback that requests may name (`--httpd-allowed-host`): a DNS name,
/// matched case-insensitively, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost(Host);

/// A `--httpd-allowed-host` value that is not a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid host {value:?}: expected a DNS name or an IP address, without a port (e.g. tunnel.example.net or 192.0.2.7)"
)]
pub struct AllowedHostError {
    pub value: String,
}

impl FromStr for AllowedHost {
    type Err = AllowedHostError;

    /// Takes `name`, `a.b.c.d`, `::1` or `[::1]`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = || AllowedHostError {
            value: value.to_owned(),
        };
        let bare = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(value);
        if let Ok(ip) = bare.parse::<Ipv6Addr>() {
            return Ok(AllowedHost(Host::Ip(IpAddr::V6(ip))));
        }
        if bare != value {
            return Err(error());
        }
        match value.parse::<Host>().map_err(|_| error())? {
            Host::Name(name) => Ok(AllowedHost(Host::Name(name.to_ascii_lowercase()))),
            ip => Ok(AllowedHost(ip)),
        }
    }
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Answers 421 to a request whose `Host` (and absolute URI, when it has one) is not allowed;
/// passes the others on.
pub(super) async fn check_host(
    State(allowed): State<Arc<[AllowedHost]>>,
    request: Request,
    next: Next,
) -> Response {
    match judge(request.headers(), request.uri(), &allowed) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Whether a request may be answered. HTTP/1.1 requires exactly one `Host`; a request in
/// absolute form (`GET http://host/path`) names its host in the URI too, and both must pass.
fn judge(headers: &HeaderMap, uri: &Uri, allowed: &[AllowedHost]) -> Result<(), ApiError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(refusal(None));
    };
    let host = host.to_str().map_err(|_| refusal(None))?;
    let authority = uri.authority().map(|a| a.as_str());
    for named in std::iter::once(host).chain(authority) {
        match request_host(named) {
            Some(host) if is_allowed(&host, allowed) => {}
            named => return Err(refusal(named.as_ref())),
        }
    }
    Ok(())
}

/// The host part of a `Host` value, `host[:port]` or `[IPv6][:port]`; `None` when it is not
/// one (userinfo, a path, an unbracketed IPv6 address, a bad port, stray characters).
fn request_host(value: &str) -> Option<Host> {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let port = after.strip_prefix(':').or(after.is_empty().then_some(""))?;
            (Host::Ip(IpAddr::V6(inside.parse().ok()?)), port)
        }
        None => {
            let (host, port) = value.rsplit_once(':').unwrap_or((value, ""));
            (host.parse::<Host>().ok()?, port)
        }
    };
    // RFC 3986 allows an empty port after the colon.
    let port_ok = port.is_empty()
        || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok());
    port_ok.then_some(host)
}

/// Loopback (`localhost`, 127.0.0.0/8, `::1`) or one of `allowed`.
fn is_allowed(host: &Host, allowed: &[AllowedHost]) -> bool {
    let loopback = match host {
        Host::Ip(IpAddr::V4(ip)) => ip.is_loopback(),
        Host::Ip(IpAddr::V6(ip)) => *ip == Ipv6Addr::LOCALHOST,
        Host::Name(name) => name.eq_ignore_ascii_case("localhost"),
    };
    loopback
        || allowed.iter().any(|AllowedHost(a)| match (a, host) {
            (Host::Name(a), Host::Name(name)) => a.eq_ignore_ascii_case(name),
            (a, host) => a == host,
        })
}

/// The 421 answer, naming the refused host when it is one (a validated name or an address,
/// so the echo carries nothing but host characters).
fn refusal(host: Option<&Host>) -> ApiError {
    let text = match host {
        Some(host) => format!(
            "Host {host} is not allowed: this REST API answers requests for localhost, 127.0.0.0/8 and [::1]; to reach it under this name, start the endpoint with --httpd-allowed-host {host}"
        ),
        None => "a missing or invalid Host is not allowed: this REST API answers requests for localhost, 127.0.0.0/8 and [::1], or for a host given with --httpd-allowed-host".to_owned(),
    };
    ApiError(StatusCode::MISDIRECTED_REQUEST, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(value: &str, extra: &[&str]) -> bool {
        let extra: Vec<AllowedHost> = extra.iter().map(|h| h.parse().unwrap()).collect();
        request_host(value).is_some_and(|host| is_allowed(&host, &extra))
    }

    #[test]
    fn loopback_names_and_addresses_pass_in_any_case_with_or_without_a_port() {
        for value in [
            "localhost",
            "localhost:8086",
            "LOCALHOST:8086",
            "LocalHost",
            "localhost:",
            "127.0.0.1",
            "127.0.0.1:8086",
            "127.255.255.254:1",
            "[::1]",
            "[::1]:8086",
            "[0:0:0:0:0:0:0:1]:8086",
        ] {
            assert!(allowed(value, &[]), "{value}");
        }
    }

    #[test]
    fn hostile_forms_are_refused() {
        for value in [
            "",
            ":8086",
            "attacker.example",
            "attacker.example:8086",
            // Rebinding names that merely start like loopback.
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "localhost.attacker.example:8086",
            "localhost.",
            "localhost-attacker.example",
            // Userinfo tricks: never part of a Host, whichever side names loopback.
            "localhost@attacker.example",
            "attacker.example@localhost",
            "user:pass@localhost:8086",
            // Other IPv6 addresses, mapped loopback, zones, unbracketed forms.
            "[::2]",
            "[::]:8086",
            "[fe80::1]:8086",
            "[fe80::1%25eth0]:8086",
            "[::ffff:127.0.0.1]",
            "::1",
            "::1:8086",
            "[::1",
            "[::1]8086",
            "[::1]:x",
            // Addresses other than the canonical dotted quad: names here, and not ours.
            "127.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "127.000.000.001",
            "0.0.0.0",
            "10.0.0.1:8086",
            // Bad ports, paths, spaces, percent-encoding, control characters.
            "localhost:65536",
            "localhost:+80",
            "localhost:80:80",
            "localhost/tunnels",
            "localhost 8086",
            "local%68ost",
            "localhost\t",
        ] {
            assert!(!allowed(value, &[]), "{value:?}");
        }
    }

    #[test]
    fn extra_hosts_pass_only_when_given() {
        assert!(!allowed("tunnel-box.example:8086", &[]));
        assert!(allowed("tunnel-box.example:8086", &["tunnel-box.example"]));
        assert!(allowed("TUNNEL-BOX.Example", &["Tunnel-Box.example"]));
        assert!(!allowed("api.tunnel-box.example", &["tunnel-box.example"]));
        assert!(!allowed(
            "tunnel-box.example.attacker.example",
            &["tunnel-box.example"]
        ));
        assert!(allowed("192.0.2.7:8086", &["192.0.2.7"]));
        assert!(!allowed("192.0.2.8", &["192.0.2.7"]));
        assert!(allowed("[2001:db8::7]:8086", &["2001:db8::7"]));
        assert!(allowed("[2001:db8::7]", &["[2001:db8::7]"]));
        assert!(allowed("127.1", &["127.1"]));
    }

    #[test]
    fn the_flag_takes_a_name_or_an_address_without_a_port() {
        for good in [
            "tunnel.example",
            "192.0.2.7",
            "::1",
            "[2001:db8::7]",
            "Host-1",
        ] {
            assert!(good.parse::<AllowedHost>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "tunnel.example:8086",
            "192.0.2.7:8086",
            "[::1]:8086",
            "[tunnel.example]",
            "user@tunnel.example",
            "*.example",
            "http://tunnel.example",
            "tunnel example",
        ] {
            let error = bad.parse::<AllowedHost>().unwrap_err();
            assert!(
                error.to_string().contains("without a port"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn host_headers_and_absolute_uris_are_both_judged() {
        let judge_request = |hosts: &[&str], uri: &str| {
            let mut headers = HeaderMap::new();
            for host in hosts {
                headers.append(header::HOST, host.parse().unwrap());
            }
            judge(&headers, &uri.parse().unwrap(), &[])
                .map_err(|ApiError(status, text)| (status, text))
        };
        assert!(judge_request(&["localhost:8086"], "/tunnels").is_ok());
        assert!(judge_request(&["localhost"], "http://127.0.0.1:8086/tunnels").is_ok());
        let (status, text) = judge_request(&[], "/tunnels").unwrap_err();
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(text.contains("--httpd-allowed-host"), "{text}");
        assert!(judge_request(&["localhost", "attacker.example"], "/").is_err());
        assert!(judge_request(&["localhost", "localhost"], "/").is_err());
        let (_, text) = judge_request(&["localhost"], "http://attacker.example/").unwrap_err();
        assert!(
            text.contains("--httpd-allowed-host attacker.example"),
            "{text}"
        );
        let (_, text) = judge_request(&["Attacker.Example:8086"], "/").unwrap_err();
        assert!(
            text.starts_with("Host Attacker.Example is not allowed"),
            "{text}"
        );
    }
}
