//! Per-object validation: the shared syntax checks (names, labels, ports, CIDRs, hosts, regexes) and the
//! dispatch to each kind's own checks, which live next to its types.
//!
//! A check never stops at the first problem: every finding is collected, so one reload tells the user
//! everything wrong with an object. Any error-level finding rejects the object.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_primitives::cidr::IpNet;

use super::meta::ObjectMeta;
use super::{Object, Severity};

/// One problem found inside an object, before it is tied to the object's kind, name and file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Finding {
    pub(crate) severity: Severity,
    pub(crate) path: String,
    pub(crate) reason: String,
}

/// Collects findings while a kind's checks walk its fields.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub(crate) items: Vec<Finding>,
}

impl Findings {
    pub(crate) fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.items.push(Finding {
            severity: Severity::Error,
            path: path.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.items.push(Finding {
            severity: Severity::Warning,
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Record a syntax check's failure, if any, as an error at `path`.
    pub(crate) fn check(&mut self, path: impl Into<String>, result: Result<(), SyntaxError>) {
        if let Err(e) = result {
            self.error(path, e.to_string());
        }
    }

    pub(crate) fn required(&mut self, path: impl Into<String>, value: &str) {
        if value.is_empty() {
            self.error(path, "required");
        }
    }

    pub(crate) fn port(&mut self, path: impl Into<String>, port: u32) {
        self.check(path, check_port(port));
    }

    pub(crate) fn percent(&mut self, path: impl Into<String>, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.error(path, "must be between 0 and 100");
        }
    }

    pub(crate) fn regex(&mut self, path: impl Into<String>, pattern: &str) {
        self.check(path, check_regex(pattern));
    }

    pub(crate) fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (k, v) in labels {
            self.check(format!("{path}.{k}"), check_label_key(k));
            self.check(format!("{path}.{k}"), check_label_value(v));
        }
    }
}

/// Why a single value failed its syntax check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("must be between 1 and 65535")]
    Port,
    #[error("invalid name {0:?}: must be lowercase letters, digits, '-' or '.', start and end with a letter or digit, at most {1} characters")]
    Name(String, usize),
    #[error("invalid label key {0:?}: must be [prefix/]name, name at most 63 of [A-Za-z0-9-_.] starting and ending alphanumeric")]
    LabelKey(String),
    #[error(
        "invalid label value {0:?}: at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric"
    )]
    LabelValue(String),
    /// The shared parser's message, which names the value.
    #[error("{0}")]
    Cidr(String),
    #[error("invalid regex: {0}")]
    Regex(String),
    #[error("invalid host {0:?}: must be a DNS name, optionally starting with \"*.\"")]
    Host(String),
    #[error("invalid IP address {0:?}")]
    Ip(String),
    #[error("invalid port name {0:?}: at most 15 of [a-z0-9-] with at least one letter")]
    PortName(String),
    #[error("invalid base64: {0}")]
    Base64(&'static str),
}

pub fn check_port(port: u32) -> Result<(), SyntaxError> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(SyntaxError::Port)
    }
}

/// RFC 1123 subdomain (most object names) or, with `max == 63` and no dots, a label (namespace names).
fn check_dns(value: &str, max: usize, dots: bool) -> Result<(), SyntaxError> {
    let err = || SyntaxError::Name(value.to_string(), max);
    if value.is_empty() || value.len() > max {
        return Err(err());
    }
    for part in value.split('.') {
        if !dots && part.len() != value.len() {
            return Err(err());
        }
        let ok = !part.is_empty()
            && part.len() <= 63
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(err());
        }
    }
    Ok(())
}

pub fn check_subdomain(value: &str) -> Result<(), SyntaxError> {
    check_dns(value, 253, true)
}

pub fn check_dns_label(value: &str) -> Result<(), SyntaxError> {
    check_dns(value, 63, false)
}

/// The name half of a label key, and every label value: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
fn qualified_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.len() <= 63
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

pub fn check_label_key(key: &str) -> Result<(), SyntaxError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| check_subdomain(p).is_ok());
    if prefix_ok && qualified_part(name) {
        Ok(())
    } else {
        Err(SyntaxError::LabelKey(key.to_string()))
    }
}

pub fn check_label_value(value: &str) -> Result<(), SyntaxError> {
    if value.is_empty() || qualified_part(value) {
        Ok(())
    } else {
        Err(SyntaxError::LabelValue(value.to_string()))
    }
}

/// Kubernetes IANA_SVC_NAME, the syntax of a named port.
pub fn check_port_name(name: &str) -> Result<(), SyntaxError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(SyntaxError::PortName(name.to_string()))
    }
}

/// Parse `198.18.0.0/15`, `2001:db8::/32` or a bare address (a host route), as Istio's `ipBlocks` allow.
pub fn parse_cidr(text: &str) -> Result<IpNet, SyntaxError> {
    mesh_primitives::cidr::parse(text).map_err(|e| SyntaxError::Cidr(e.to_string()))
}

pub fn check_regex(pattern: &str) -> Result<(), SyntaxError> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| SyntaxError::Regex(e.to_string()))
}

/// A host in Istio config: a DNS name (short or fully qualified), `*`, or `*.suffix`.
pub fn check_host(host: &str) -> Result<(), SyntaxError> {
    let err = || SyntaxError::Host(host.to_string());
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(err());
    }
    for part in name.split('.') {
        let ok = !part.is_empty()
            && part.len() <= 63
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(err());
        }
    }
    Ok(())
}

/// Decode standard base64 (RFC 4648, `+/`, padding optional), as protobuf JSON writes `bytes` fields.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, SyntaxError> {
    fn sextet(c: u8) -> Result<u32, SyntaxError> {
        match c {
            b'A'..=b'Z' => Ok(u32::from(c - b'A')),
            b'a'..=b'z' => Ok(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Ok(u32::from(c - b'0') + 52),
            b'+' => Ok(62),
            b'/' => Ok(63),
            _ => Err(SyntaxError::Base64("unexpected character")),
        }
    }
    let data = text.trim_end_matches('=').as_bytes();
    if data.len() % 4 == 1 || text.len() - data.len() > 2 {
        return Err(SyntaxError::Base64("wrong length"));
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= sextet(*c)? << (18 - 6 * i);
        }
        // A chunk of n characters carries n - 1 whole bytes.
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    Ok(out)
}

pub fn check_ip(text: &str) -> Result<(), SyntaxError> {
    text.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| SyntaxError::Ip(text.to_string()))
}

/// Checks every object shares: a valid name, namespace and labels.
fn validate_meta(f: &mut Findings, meta: &ObjectMeta, namespaced: bool) {
    if meta.name.is_empty() {
        f.error("metadata.name", "required");
    } else if namespaced {
        f.check("metadata.name", check_subdomain(&meta.name));
    } else {
        f.check("metadata.name", check_dns_label(&meta.name));
    }
    if namespaced {
        f.check("metadata.namespace", check_dns_label(&meta.namespace));
    }
    f.labels("metadata.labels", &meta.labels);
    for key in meta.annotations.keys() {
        f.check(format!("metadata.annotations.{key}"), check_label_key(key));
    }
}

/// Run the metadata checks and the kind's own checks; findings' paths are relative to the object's root.
pub(crate) fn validate_object(object: &Object) -> Vec<Finding> {
    let mut f = Findings::default();
    validate_meta(&mut f, object.metadata(), object.kind().namespaced());
    match object {
        Object::Namespace(o) => o.validate(&mut f),
        Object::Pod(o) => o.validate(&mut f),
        Object::Service(o) => o.validate(&mut f),
        Object::EndpointSlice(o) => o.validate(&mut f),
        Object::WorkloadEntry(o) => o.validate(&mut f),
        Object::VirtualService(o) => o.validate(&mut f),
        Object::DestinationRule(o) => o.validate(&mut f),
        Object::PeerAuthentication(o) => o.validate(&mut f),
        Object::AuthorizationPolicy(o) => o.validate(&mut f),
        Object::TrafficSplit(o) => o.validate(&mut f),
        Object::Gateway(o) => o.validate(&mut f),
        Object::HttpRoute(o) => o.validate(&mut f),
        Object::GrpcRoute(o) => o.validate(&mut f),
    }
    f.items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(check_subdomain("order-service.v1").is_ok());
        assert!(check_subdomain("Order").is_err());
        assert!(check_subdomain("-a").is_err());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_label_key("istio.io/dataplane-mode").is_ok());
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("bad key").is_err());
        assert!(check_label_key("Bad_Prefix/x").is_err());
        assert!(check_label_key("a/b/c").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x").is_ok());
        assert!(check_label_value("-v1").is_err());
        assert!(check_label_value(&"v".repeat(64)).is_err());
        assert!(check_port_name("http-web").is_ok());
        assert!(check_port_name("8080").is_err());
        assert!(check_port_name("this-name-is-too-long").is_err());
    }

    #[test]
    fn cidrs_ports_hosts_regexes() {
        assert_eq!(
            parse_cidr("198.18.0.0/15"),
            Ok(IpNet::new("198.18.0.0".parse().expect("ip"), 15).expect("prefix"))
        );
        assert_eq!(
            parse_cidr("10.1.2.3"),
            Ok(IpNet::new("10.1.2.3".parse().expect("ip"), 32).expect("prefix"))
        );
        assert_eq!(
            parse_cidr("2001:db8::/32"),
            Ok(IpNet::new("2001:db8::".parse().expect("ip"), 32).expect("prefix"))
        );
        for bad in [
            "198.18.0.0/33",
            "198.18.0/15",
            "198.18.0.0/",
            "198.18.0.0/+15",
            "::/129",
            "x",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(check_port(0).is_err());
        assert!(check_port(65536).is_err());
        assert!(check_port(8080).is_ok());
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("reviews").is_ok());
        assert!(check_host("*").is_ok());
        assert!(check_host("a..b").is_err());
        assert!(check_host("a*.b").is_err());
        assert!(check_host("http://x").is_err());
        assert_eq!(decode_base64("aGVsbG8="), Ok(b"hello".to_vec()));
        assert_eq!(decode_base64("aGVsbG8"), Ok(b"hello".to_vec()));
        assert_eq!(decode_base64("AAEC/w=="), Ok(vec![0, 1, 2, 255]));
        assert_eq!(decode_base64(""), Ok(Vec::new()));
        assert!(decode_base64("a").is_err());
        assert!(decode_base64("a$bc").is_err());
        assert!(check_regex("^/api/v[0-9]+").is_ok());
        assert!(matches!(
            check_regex("(unclosed"),
            Err(SyntaxError::Regex(_))
        ));
    }
}
