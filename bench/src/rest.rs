//! What the suites read from an endpoint's REST API: the packet size of each of its QUIC
//! connections (`maxUdpPayload` in `GET /connections`), how far path MTU discovery has grown
//! it.

use std::net::SocketAddr;
use std::time::Duration;

use crate::hostile::server::http_get;

/// `maxUdpPayload` of each connection the endpoint whose REST API is at `api` lists (from the
/// calling thread's network namespace).
pub fn max_udp_payloads(api: SocketAddr) -> Result<Vec<u16>, String> {
    let (status, body) = http_get(api, "/connections", Duration::from_secs(5))?;
    if status != 200 {
        return Err(format!("GET /connections answered {status}: {body}"));
    }
    Ok(parse(&body))
}

/// The `maxUdpPayload` of each connection in a `GET /connections` body.
fn parse(body: &str) -> Vec<u16> {
    body.split("\"maxUdpPayload\":")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_from_each_connection() {
        let body = r#"[{"id":1,"rttMs":0.2,"maxUdpPayload":1472,"congestionWindow":9},
                       {"id":2,"maxUdpPayload":8972}]"#;
        assert_eq!(parse(body), [1472, 8972]);
        assert_eq!(parse("[]"), [0u16; 0]);
        assert_eq!(parse(r#"{"maxUdpPayload":"x"}"#), [0u16; 0]);
    }
}
