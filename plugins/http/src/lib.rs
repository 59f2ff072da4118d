//! Http: the token source that asks a web service for each connection's token.
//!
//! For a connection from `IP:PORT` it sends `GET <url>?addr=IP:PORT` and expects
//! `{"token": "..."}`. A non-2xx status, a body that is not that JSON, a missing or empty
//! token, or no answer within the time-out (5 s unless configured) refuses the application
//! connection, with the reason in the client's log. Connections to the service are kept alive
//! and reused.
//!
//! The configuration string is the URL, or a JSON object
//! `{"url": "...", "timeout_ms": 2000, "ca_file": "/etc/quictun/token-ca.pem"}`.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use quictun_plugin_api::{HostLog, PluginError, TokenSource, export_token_source};
use reqwest::Url;
use reqwest::blocking::Client;

/// Default time a request may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from the service.
const MAX_BODY: u64 = 64 * 1024;

pub struct Http {
    client: Client,
    url: Url,
    timeout: Duration,
}

/// The parsed configuration string.
#[derive(Debug, PartialEq)]
struct Settings {
    url: Url,
    timeout: Duration,
    ca_file: Option<String>,
}

impl TokenSource for Http {
    fn new(config: &str, log: HostLog) -> Result<Self, String> {
        let settings = settings(config)?;
        let client = Client::builder()
            .use_preconfigured_tls(tls(settings.ca_file.as_deref())?)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        log.info(&format!(
            "asking {} for tokens (time-out {:?})",
            settings.url, settings.timeout
        ));
        Ok(Http {
            client,
            url: settings.url,
            timeout: settings.timeout,
        })
    }

    fn token(&self, client_addr: &str) -> Result<Vec<u8>, PluginError> {
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("addr", client_addr);
        let response = self.client.get(url.clone()).send().map_err(|error| {
            if error.is_timeout() {
                PluginError::failed(format!("{url}: no answer within {:?}", self.timeout))
            } else {
                PluginError::failed(format!("{url}: {}", error_chain(&error)))
            }
        })?;
        let status = response.status();
        let mut body = Vec::new();
        response
            .take(MAX_BODY)
            .read_to_end(&mut body)
            .map_err(|e| PluginError::failed(format!("{url}: cannot read the answer: {e}")))?;
        if !status.is_success() {
            return Err(PluginError::refused(format!("{url}: HTTP {status}")));
        }
        token_from_body(&body)
            .map(String::into_bytes)
            .map_err(|reason| PluginError::failed(format!("{url}: {reason}")))
    }
}

fn settings(config: &str) -> Result<Settings, String> {
    let config = config.trim();
    if config.is_empty() {
        return Err("Http needs the token service's URL as --token-source".into());
    }
    if !config.starts_with('{') {
        return Ok(Settings {
            url: parse_url(config)?,
            timeout: DEFAULT_TIMEOUT,
            ca_file: None,
        });
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(config)
        .map_err(|e| format!("Http configuration is not valid JSON: {e}"))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !["url", "timeout_ms", "ca_file"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown Http setting {unknown:?} (known: url, timeout_ms, ca_file)"
        ));
    }
    let url = object
        .get("url")
        .and_then(|v| v.as_str())
        .ok_or("Http configuration needs \"url\"")?;
    let timeout = match object.get("timeout_ms") {
        None => DEFAULT_TIMEOUT,
        Some(value) => Duration::from_millis(
            value
                .as_u64()
                .filter(|&ms| ms > 0)
                .ok_or("\"timeout_ms\" must be a positive integer")?,
        ),
    };
    let ca_file = match object.get("ca_file") {
        None => None,
        Some(value) => Some(
            value
                .as_str()
                .ok_or("\"ca_file\" must be a path")?
                .to_owned(),
        ),
    };
    Ok(Settings {
        url: parse_url(url)?,
        timeout,
        ca_file,
    })
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("{text:?}: scheme {other:?} is not http or https")),
    }
}

/// TLS for https services: the public web's roots, plus `ca_file`'s certificates.
fn tls(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read ca_file {path}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {path}: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The token in a `{"token": "..."}` answer.
fn token_from_body(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    match value.get("token") {
        Some(serde_json::Value::String(token)) if !token.is_empty() => Ok(token.clone()),
        Some(serde_json::Value::String(_)) => Err("answer has an empty \"token\"".into()),
        Some(_) => Err("\"token\" in the answer is not a string".into()),
        None => Err("answer has no \"token\"".into()),
    }
}

/// The error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

export_token_source!(Http, name = "Http", may_block = true);

#[cfg(test)]
mod tests;
