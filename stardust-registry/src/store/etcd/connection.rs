//! How a node reaches etcd: connection options (timeouts, HTTP/2 keep-alive, TLS, credentials)
//! and the advice it gives when that goes wrong.
//!
//! This is the part an operator gets wrong first (a missing CA file, etcd with authentication
//! on, `etcd://` against a TLS port), and etcd-client's errors rarely name the setting at fault;
//! so besides building the options it turns those errors into hints, and warns at start-up when
//! registrations would cross a network in plaintext.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::CONNECT_TIMEOUT;
use crate::config::EtcdAccess;
use crate::store::StoreError;

/// The connection options: timeouts, HTTP/2 keep-alive, TLS and credentials.
pub(super) fn connect_options(
    endpoints: &[String],
    access: &EtcdAccess,
) -> Result<ConnectOptions, StoreError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot read [etcd] {what} {}: {e}", path.display()))
        })
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        // HTTP/2 pings notice a dead etcd connection on an idle node.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if endpoints.iter().any(|e| e.starts_with("https://")) {
        let ca_file = access.ca_file.as_deref().ok_or_else(|| {
            StoreError::Unavailable("an etcds:// store needs [etcd] ca_file".into())
        })?;
        let mut tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca_file", ca_file)?));
        if let (Some(cert), Some(key)) = (&access.cert_file, &access.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(file)) = (&access.user, &access.password_file) {
        let text = String::from_utf8(read("password_file", file)?).map_err(|_| {
            StoreError::Unavailable(format!(
                "[etcd] password_file {} is not UTF-8 text",
                file.display()
            ))
        })?;
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        // etcd's auth tokens expire (5 min by default): fetch a new one when they do.
        options = options
            .with_user(user.clone(), password.to_owned())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// `e` with a hint at the setting most likely missing, for errors that do not name it.
pub(super) fn with_hint(e: StoreError, endpoints: &[String], access: &EtcdAccess) -> StoreError {
    let StoreError::Unavailable(message) = e else {
        return e;
    };
    let tls = endpoints.iter().any(|e| e.starts_with("https://"));
    let hint = if message.contains("user name is empty") {
        Some("etcd has authentication on: set [etcd] user and password_file")
    } else if tls && access.cert_file.is_none() {
        Some(
            "if etcd requires client certificates (--client-cert-auth), set [etcd] cert_file and key_file",
        )
    } else if !tls && message.contains("connection") {
        Some("if etcd speaks TLS, write the store as etcds://")
    } else {
        None
    };
    StoreError::Unavailable(match hint {
        Some(hint) => format!("{message} ({hint})"),
        None => message,
    })
}

/// The first host of a plaintext endpoint that is not on loopback, if any.
pub(super) fn plaintext_remote(endpoints: &[String]) -> Option<String> {
    endpoints.iter().find_map(|e| {
        let host_port = e.strip_prefix("http://")?;
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then(|| host.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_only_quiet_on_loopback() {
        let eps = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(
            plaintext_remote(&eps(&[
                "http://127.0.0.1:2379",
                "http://localhost:2379",
                "http://[::1]:2379"
            ])),
            None
        );
        assert_eq!(plaintext_remote(&eps(&["https://10.0.0.1:2379"])), None);
        assert_eq!(
            plaintext_remote(&eps(&["http://127.0.0.1:2379", "http://10.0.0.2:2379"])).as_deref(),
            Some("10.0.0.2")
        );
    }
}
