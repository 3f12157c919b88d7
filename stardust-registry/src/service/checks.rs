//! What a request must be before the registry does anything with it: names, versions,
//! endpoints.

use std::net::SocketAddr;

use semver::VersionReq;
use stardust::discovery::api::RegistryError;

use super::MAX_NAME_LEN;

pub(super) fn valid_name(what: &str, name: &str) -> Result<(), RegistryError> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(RegistryError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters without whitespace"
        )));
    }
    Ok(())
}

/// Parses a version requirement; empty means any. A bare version (`1.2`) means `^1.2`.
pub(super) fn parse_req(text: &str) -> Result<VersionReq, RegistryError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(VersionReq::STAR);
    }
    VersionReq::parse(t).map_err(|e| {
        RegistryError::Invalid(format!(
            "`{text}` is not a version requirement like `^1.2`, `>=1.0, <2` or `*`: {e}"
        ))
    })
}

/// Checks `endpoint` is `host:port` (a host name, an IPv4 address or a bracketed IPv6 address).
pub(super) fn validate_endpoint(endpoint: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| {
        Err(RegistryError::Invalid(format!(
            "endpoint `{endpoint}` is not `host:port`: {why}"
        )))
    };
    if endpoint.parse::<SocketAddr>().is_ok() {
        return if endpoint.ends_with(":0") {
            bad("port 0 cannot be dialled")
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(0) => return bad("port 0 cannot be dialled"),
        Ok(_) => {}
        Err(_) => return bad("the port is not a number from 1 to 65535"),
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return bad("the host is not a valid host name or IP address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_requirements() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let caret = parse_req("^1.2").unwrap();
        let bare = parse_req("1.2").unwrap();
        for req in [&caret, &bare] {
            assert!(req.matches(&v("1.2.0")));
            assert!(req.matches(&v("1.9.3")));
            assert!(!req.matches(&v("1.1.9")));
            assert!(!req.matches(&v("2.0.0")));
        }
        for any in ["*", "", "  "] {
            let req = parse_req(any).unwrap();
            assert!(req.matches(&v("0.1.0")) && req.matches(&v("7.0.0")));
        }
        assert!(matches!(parse_req("one"), Err(RegistryError::Invalid(_))));
    }

    #[test]
    fn endpoints() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:7600",
            "calc-1.internal:9000",
            "localhost:1",
        ] {
            validate_endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "host",
            ":80",
            "host:",
            "host:0",
            "host:70000",
            "a b:80",
            "-x:80",
            "127.0.0.1:0",
            "::1:80",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad:?} accepted");
        }
    }
}
