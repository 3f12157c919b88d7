//! What a request must be before the registry does anything with it: within the configured
//! [`Limits`] (checked first, in proportion to the request's own size), then well-formed names,
//! versions and endpoints.
//!
//! A request over a cap is refused with `Invalid`, naming the cap and its value; nothing has
//! been stored or computed for it yet.

use std::net::SocketAddr;

use semver::VersionReq;
use stardust::discovery::api::{Latency, Registration, RegistryError, ServiceDescription, Status};

use crate::config::Limits;

/// Longest endpoint: a DNS name (253 bytes), a colon and a port. Fixed: any longer `host:port`
/// is invalid anyway.
pub(super) const MAX_ENDPOINT_LEN: usize = 253 + 1 + 5;
/// Error kinds one report entry may list (each kind once; there are about twenty).
const MAX_REPORT_ERRORS: usize = 64;

/// A request over the cap `limit` (of `max`): `what` says by how much.
fn over(what: std::fmt::Arguments<'_>, max: usize, limit: &str) -> RegistryError {
    RegistryError::Invalid(format!("{what}; the limit is {max} (limits.{limit})"))
}

/// `text` is at most `max` bytes long.
fn bounded(what: &str, text: &str, max: usize, limit: &str) -> Result<(), RegistryError> {
    if text.len() > max {
        return Err(over(
            format_args!("{what} is {} bytes long", text.len()),
            max,
            limit,
        ));
    }
    Ok(())
}

/// A service name argument: at most `max_name_len` bytes.
pub(super) fn service_arg(limits: &Limits, service: &str) -> Result<(), RegistryError> {
    bounded(
        "the service name",
        service,
        limits.max_name_len,
        "max_name_len",
    )
}

/// A `(service, version_req)` pair (`discover`, `subscribe`, `unsubscribe`).
pub(super) fn query_args(
    limits: &Limits,
    service: &str,
    version_req: &str,
) -> Result<(), RegistryError> {
    service_arg(limits, service)?;
    bounded(
        "the version requirement",
        version_req,
        limits.max_version_len,
        "max_version_len",
    )
}

/// An endpoint argument: at most [`MAX_ENDPOINT_LEN`] bytes (before it is parsed or quoted).
pub(super) fn endpoint_arg(endpoint: &str) -> Result<(), RegistryError> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(RegistryError::Invalid(format!(
            "the endpoint is {} bytes long; `host:port` is at most {MAX_ENDPOINT_LEN}",
            endpoint.len()
        )));
    }
    Ok(())
}

/// A registration's sizes: name, version, endpoint, and its tags (count, key and value
/// lengths). Whether they are well-formed is checked next, by the caller.
pub(super) fn registration_args(limits: &Limits, r: &Registration) -> Result<(), RegistryError> {
    service_arg(limits, &r.service)?;
    bounded(
        "the version",
        &r.version,
        limits.max_version_len,
        "max_version_len",
    )?;
    endpoint_arg(&r.endpoint)?;
    if r.tags.len() > limits.max_tags {
        return Err(over(
            format_args!("the registration has {} tags", r.tags.len()),
            limits.max_tags,
            "max_tags",
        ));
    }
    for (key, value) in &r.tags {
        bounded("a tag key", key, limits.max_tag_len, "max_tag_len")?;
        bounded("a tag value", value, limits.max_tag_len, "max_tag_len")?;
    }
    if let Some(d) = &r.description {
        description_args(limits, d)?;
    }
    Ok(())
}

/// A registration's service description: how many methods, how long its texts.
fn description_args(limits: &Limits, d: &ServiceDescription) -> Result<(), RegistryError> {
    use super::describe::{MAX_DOCS_LEN, MAX_METHODS, MAX_TYPE_LEN};
    let fixed = |what: &str, len: usize, max: usize| {
        if len > max {
            Err(RegistryError::Invalid(format!(
                "{what} is {len} long; at most {max} are taken"
            )))
        } else {
            Ok(())
        }
    };
    fixed("the service's doc text", d.docs.len(), MAX_DOCS_LEN)?;
    fixed(
        "the description's method list",
        d.methods.len(),
        MAX_METHODS,
    )?;
    for m in &d.methods {
        bounded(
            "a described method name",
            &m.name,
            limits.max_name_len,
            "max_name_len",
        )?;
        fixed("a method's doc text", m.docs.len(), MAX_DOCS_LEN)?;
        fixed("a method's return type", m.returns.len(), MAX_TYPE_LEN)?;
        fixed("a method's argument list", m.args.len(), MAX_METHODS)?;
        for a in &m.args {
            bounded(
                "an argument name",
                &a.name,
                limits.max_name_len,
                "max_name_len",
            )?;
            fixed("an argument type", a.ty.len(), MAX_TYPE_LEN)?;
        }
    }
    Ok(())
}

/// A heartbeat's status report: its entries, their names, error lists and histograms.
pub(super) fn report_args(limits: &Limits, status: &Status) -> Result<(), RegistryError> {
    let entries = status
        .served
        .len()
        .saturating_add(status.called.len())
        .saturating_add(status.faults.len());
    if entries > limits.max_report_entries {
        return Err(over(
            format_args!("the status report has {entries} entries (served + called + faults)"),
            limits.max_report_entries,
            "max_report_entries",
        ));
    }
    bounded(
        "the reported software version",
        &status.version,
        limits.max_version_len,
        "max_version_len",
    )?;
    for m in &status.served {
        service_arg(limits, &m.service)?;
        bounded(
            "a reported method name",
            &m.method,
            limits.max_name_len,
            "max_name_len",
        )?;
        figures(m.errors.len(), &m.latency)?;
    }
    for c in &status.called {
        service_arg(limits, &c.service)?;
        endpoint_arg(&c.endpoint)?;
        figures(c.errors.len(), &c.latency)?;
    }
    for f in &status.faults {
        service_arg(limits, &f.service)?;
        bounded(
            "a reported fault name",
            &f.fault,
            limits.max_name_len,
            "max_name_len",
        )?;
        // An unknown kind (a newer consumer's) is left out by the monitor, not refused: a
        // heartbeat must not fail over a figure.
        bounded(
            "a reported fault kind",
            &f.kind,
            limits.max_name_len,
            "max_name_len",
        )?;
    }
    Ok(())
}

/// One report entry's error kinds and latency buckets: fixed bounds (the kinds there are, and
/// the histogram's shape).
fn figures(errors: usize, latency: &Latency) -> Result<(), RegistryError> {
    if errors > MAX_REPORT_ERRORS {
        return Err(RegistryError::Invalid(format!(
            "a status report entry lists {errors} error kinds; at most {MAX_REPORT_ERRORS}"
        )));
    }
    let buckets = crate::monitor::BUCKETS;
    if latency.buckets.len() > buckets {
        return Err(RegistryError::Invalid(format!(
            "a status report entry has {} latency buckets; at most {buckets}",
            latency.buckets.len()
        )));
    }
    Ok(())
}

/// A name (app or service) is non-empty, without whitespace or control characters. Its length
/// is checked before (login: the fixed app name bound; register: `max_name_len`).
pub(super) fn valid_name(what: &str, name: &str) -> Result<(), RegistryError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RegistryError::Invalid(format!(
            "{what} must be non-empty, without whitespace or control characters"
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
    use stardust::discovery::api::MethodFigures;

    use super::*;

    #[test]
    fn caps_are_inclusive() {
        let limits = Limits::default()
            .with_max_name_len(4)
            .with_max_version_len(5)
            .with_max_tags(1)
            .with_max_tag_len(2)
            .with_max_report_entries(1);
        let mut r = Registration {
            service: "abcd".into(),
            version: "1.2.3".into(),
            endpoint: format!("{}:65535", "h".repeat(253)),
            weight: 1,
            tags: [("ab".to_owned(), "cd".to_owned())].into(),
            tls: false,
            description: None,
        };
        registration_args(&limits, &r).expect("every size at its cap");
        r.endpoint.push('5');
        assert!(registration_args(&limits, &r).is_err());
        query_args(&limits, "abcd", "^1.23").expect("at the caps");
        assert!(query_args(&limits, "abcde", "*").is_err());
        assert!(query_args(&limits, "abcd", "^1.234").is_err());

        let entry = MethodFigures {
            service: "abcd".into(),
            method: "efgh".into(),
            errors: vec![Default::default(); MAX_REPORT_ERRORS],
            latency: Latency {
                buckets: vec![0; crate::monitor::BUCKETS],
                ..Default::default()
            },
            ..Default::default()
        };
        let mut status = Status {
            version: "0.1.0".into(),
            served: vec![entry.clone()],
            ..Default::default()
        };
        report_args(&limits, &status).expect("every size at its cap");
        status.served.push(entry);
        let Err(RegistryError::Invalid(m)) = report_args(&limits, &status) else {
            panic!("two entries passed a cap of one");
        };
        assert!(
            m.contains("has 2 entries") && m.contains("(limits.max_report_entries)"),
            "{m}"
        );
    }

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
