//! The L7 config as the waypoint applies it: `mesh.l7.v1.L7Service` resources compiled once (regexes built,
//! weights summed, durations typed) into an immutable [`L7Config`] that every request reads without locks.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use mesh_core::workload::ip_from_bytes as ip;
use mesh_proto::mesh::l7::v1 as pb;
use regex::Regex;

#[derive(Debug, thiserror::Error)]
#[error("L7Service {service}: {field}: {reason}")]
pub struct CompileError {
    pub service: String,
    pub field: String,
    pub reason: String,
}

/// Every service's routes, keyed `<namespace>/<hostname>`.
#[derive(Debug, Default)]
pub struct L7Config {
    pub services: HashMap<String, Arc<ServiceRoutes>>,
}

#[derive(Debug)]
pub struct ServiceRoutes {
    pub key: String,
    pub routes: Vec<Route>,
    pub policy: Policy,
    pub subsets: HashMap<String, Subset>,
    pub sources: Vec<String>,
    /// AuthorizationPolicies for this service, checked before routing.
    pub authorization: Vec<crate::authz::Policy>,
}

#[derive(Debug)]
pub struct Subset {
    pub policy: Policy,
    pub addresses: HashSet<IpAddr>,
}

/// Istio's default is LEAST_REQUEST (for services the control plane sends no policy for, too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    #[default]
    LeastRequest,
    Random,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub connect_timeout: Option<Duration>,
    pub max_pending: Option<usize>,
    pub max_requests: Option<usize>,
    pub max_requests_per_connection: Option<usize>,
    pub max_retries: Option<usize>,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub lb: LoadBalancer,
    pub limits: Limits,
    pub outlier: Option<Outlier>,
    pub port_level: Vec<(u16, Policy)>,
}

impl Policy {
    /// The policy for `port`: a port-level override if one names it.
    pub fn for_port(&self, port: u16) -> &Policy {
        self.port_level
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, pol)| pol)
            .unwrap_or(self)
    }
}

#[derive(Debug)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StrMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
pub struct KeyMatch {
    pub name: String,
    /// `None`: present with any value.
    pub value: Option<StrMatch>,
    pub invert: bool,
}

impl KeyMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v),
        };
        hit != self.invert
    }
}

#[derive(Debug, Default)]
pub struct Match {
    pub uri: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub headers: Vec<KeyMatch>,
    pub query: Vec<KeyMatch>,
    pub source_namespace: Option<String>,
    pub source_addresses: Option<HashSet<IpAddr>>,
    pub port: Option<u16>,
}

/// What a request is matched on.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    pub port: u16,
    pub source_ip: Option<IpAddr>,
    pub source_namespace: Option<&'a str>,
}

impl Match {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        let path_only = r.path.split('?').next().unwrap_or(r.path);
        let uri_ok = match &self.uri {
            None => true,
            // Envoy: a prefix matches the whole :path; exact and regex match it without the query string.
            Some(m @ StrMatch::Prefix(_)) => m.matches(r.path),
            Some(m) => m.matches(path_only),
        };
        uri_ok
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(r.method.as_str()))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(r.authority))
            && self.port.is_none_or(|p| p == r.port)
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|ns| r.source_namespace == Some(ns.as_str()))
            && self
                .source_addresses
                .as_ref()
                .is_none_or(|set| r.source_ip.is_some_and(|ip| set.contains(&ip)))
            && self
                .headers
                .iter()
                .all(|h| h.matches(header_value(r.headers, &h.name).as_deref()))
            && self
                .query
                .iter()
                .all(|q| q.matches(query_value(r.path, &q.name)))
    }
}

/// A header's value; repeated headers are joined with `,` as Envoy does.
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_string(), |acc, v| acc + "," + v))
}

fn query_value<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderOps {
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// `<namespace>/<hostname>`.
    pub service: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug)]
pub struct WeightedDestination {
    pub dest: Destination,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug)]
pub enum Action {
    Forward {
        destinations: Vec<WeightedDestination>,
        total_weight: u32,
    },
    Direct {
        status: http::StatusCode,
        body: bytes::Bytes,
    },
    Redirect {
        uri: Option<String>,
        authority: Option<String>,
        scheme: Option<String>,
        port: Option<u16>,
        status: http::StatusCode,
    },
}

#[derive(Clone, Debug, Default)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
}

/// Envoy's retry conditions.
#[derive(Clone, Debug, Default)]
pub struct RetryOn {
    pub any_5xx: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub reset: bool,
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    pub status_codes: Vec<u16>,
    /// gRPC status names (`unavailable`, `cancelled`, ...) as codes.
    pub grpc: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(http::StatusCode, f64)>,
}

#[derive(Debug)]
pub struct Mirror {
    pub dest: Destination,
    pub percent: f64,
}

#[derive(Debug)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub full_path: bool,
    pub authority: Option<String>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matches: Vec<Match>,
    pub action: Action,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Fault,
    pub mirrors: Vec<Mirror>,
}

impl ServiceRoutes {
    /// The first route matching `r`, with the match that did (for prefix rewrites); `None` if no route matches.
    pub fn route(&self, r: &RequestView<'_>) -> Option<(&Route, Option<&Match>)> {
        self.routes.iter().find_map(|route| {
            if route.matches.is_empty() {
                return Some((route, None));
            }
            route
                .matches
                .iter()
                .find(|m| m.matches(r))
                .map(|m| (route, Some(m)))
        })
    }

    /// A subset's policy (merged over the host's by the control plane), or the host's.
    pub fn policy(&self, subset: Option<&str>) -> &Policy {
        subset
            .and_then(|s| self.subsets.get(s))
            .map(|s| &s.policy)
            .unwrap_or(&self.policy)
    }
}

/// Istio's default route for a service without one: itself, with Istio's default retry policy.
pub fn default_route(service: &str) -> Route {
    Route {
        name: "default".into(),
        matches: Vec::new(),
        action: Action::Forward {
            destinations: vec![WeightedDestination {
                dest: Destination {
                    service: service.to_string(),
                    subset: None,
                    port: None,
                },
                weight: 100,
                request_headers: Default::default(),
                response_headers: Default::default(),
            }],
            total_weight: 100,
        },
        request_headers: Default::default(),
        response_headers: Default::default(),
        rewrite: None,
        timeout: None,
        retry: RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                status_codes: vec![503],
                grpc: vec![1, 14],
                ..Default::default()
            },
        },
        fault: Default::default(),
        mirrors: Vec::new(),
    }
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn nonzero(v: u32) -> Option<usize> {
    (v > 0).then_some(v as usize)
}

/// Compiles one resource; every error names the field at fault.
pub fn compile(svc: &pb::L7Service) -> Result<ServiceRoutes, CompileError> {
    let key = format!("{}/{}", svc.namespace, svc.hostname);
    let err = |field: String, reason: String| CompileError {
        service: key.clone(),
        field,
        reason,
    };
    let mut routes: Vec<Route> = svc
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| compile_route(r).map_err(|(f, why)| err(format!("routes[{i}].{f}"), why)))
        .collect::<Result<_, _>>()?;
    // A service with only a DestinationRule still routes to itself.
    if routes.is_empty() {
        routes.push(default_route(&key));
    }
    let mut subsets = HashMap::new();
    for (i, s) in svc.subsets.iter().enumerate() {
        let addresses = s
            .addresses
            .iter()
            .map(|a| {
                ip(a).ok_or_else(|| err(format!("subsets[{i}].addresses"), "not an IP".into()))
            })
            .collect::<Result<_, _>>()?;
        let policy = s.policy.as_ref().map(policy).unwrap_or_default();
        subsets.insert(s.name.clone(), Subset { policy, addresses });
    }
    let authorization = svc
        .authorization
        .iter()
        .map(crate::authz::compile)
        .collect::<Result<_, _>>()
        .map_err(|e| err("authorization".into(), e))?;
    Ok(ServiceRoutes {
        authorization,
        routes,
        policy: svc.policy.as_ref().map(policy).unwrap_or_default(),
        subsets,
        sources: svc.sources.clone(),
        key,
    })
}

fn policy(p: &pb::TrafficPolicy) -> Policy {
    let limits = p
        .connection_pool
        .as_ref()
        .map(|c| Limits {
            max_connections: nonzero(c.max_connections),
            connect_timeout: ms(c.connect_timeout_ms),
            max_pending: nonzero(c.http1_max_pending_requests),
            max_requests: nonzero(c.http2_max_requests),
            max_requests_per_connection: nonzero(c.max_requests_per_connection),
            max_retries: nonzero(c.max_retries),
            idle_timeout: ms(c.idle_timeout_ms),
            h2_upgrade: c.h2_upgrade_policy == pb::H2Upgrade::H2Upgrade as i32,
        })
        .unwrap_or_default();
    Policy {
        lb: match pb::LoadBalancer::try_from(p.load_balancer) {
            Ok(pb::LoadBalancer::LeastRequest) => LoadBalancer::LeastRequest,
            Ok(pb::LoadBalancer::Random) => LoadBalancer::Random,
            _ => LoadBalancer::RoundRobin,
        },
        limits,
        outlier: p.outlier_detection.as_ref().map(|o| Outlier {
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: ms(o.interval_ms).unwrap_or(Duration::from_secs(10)),
            base_ejection: ms(o.base_ejection_time_ms).unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: o.max_ejection_percent,
        }),
        port_level: p
            .port_level
            .iter()
            .filter_map(|pl| Some((u16::try_from(pl.port).ok()?, policy(pl.policy.as_ref()?))))
            .collect(),
    }
}

type FieldError = (String, String);

fn str_match(m: &pb::StringMatch, field: &str) -> Result<Option<StrMatch>, FieldError> {
    use pb::string_match::Kind;
    Ok(match &m.kind {
        None => None,
        Some(Kind::Exact(e)) => Some(StrMatch::Exact(e.clone())),
        Some(Kind::Prefix(p)) => Some(StrMatch::Prefix(p.clone())),
        // Envoy's regexes are RE2 and anchored to the whole value.
        Some(Kind::Regex(r)) => Some(StrMatch::Regex(
            Regex::new(&format!("^(?:{r})$")).map_err(|e| (field.to_string(), e.to_string()))?,
        )),
    })
}

fn opt_str_match(m: &Option<pb::StringMatch>, field: &str) -> Result<Option<StrMatch>, FieldError> {
    m.as_ref().map_or(Ok(None), |m| str_match(m, field))
}

fn key_matches(list: &[pb::HeaderMatch], field: &str) -> Result<Vec<KeyMatch>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            Ok(KeyMatch {
                name: h.name.to_ascii_lowercase(),
                value: opt_str_match(&h.value, &format!("{field}[{i}]"))?,
                invert: h.invert,
            })
        })
        .collect()
}

fn compile_match(m: &pb::RouteMatch, i: usize) -> Result<Match, FieldError> {
    let f = |name: &str| format!("matches[{i}].{name}");
    let source_addresses = if m.source_labels.is_empty() {
        None
    } else {
        Some(m.source_addresses.iter().filter_map(|a| ip(a)).collect())
    };
    Ok(Match {
        uri: opt_str_match(&m.uri, &f("uri"))?,
        method: opt_str_match(&m.method, &f("method"))?,
        authority: opt_str_match(&m.authority, &f("authority"))?,
        headers: key_matches(&m.headers, &f("headers"))?,
        query: key_matches(&m.query_params, &f("queryParams"))?,
        source_namespace: Some(m.source_namespace.clone()).filter(|s| !s.is_empty()),
        source_addresses,
        port: u16::try_from(m.port).ok().filter(|p| *p != 0),
    })
}

fn header_ops(h: &Option<pb::HeaderOps>, field: &str) -> Result<HeaderOps, FieldError> {
    let Some(h) = h else {
        return Ok(HeaderOps::default());
    };
    let bad = |e: String| (field.to_string(), e);
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> Result<Vec<_>, FieldError> {
        let mut v: Vec<_> = m
            .iter()
            .map(|(k, v)| {
                Ok((
                    http::HeaderName::try_from(k.as_str()).map_err(|e| bad(format!("{k}: {e}")))?,
                    http::HeaderValue::try_from(v.as_str())
                        .map_err(|e| bad(format!("{k}: {e}")))?,
                ))
            })
            .collect::<Result<_, FieldError>>()?;
        v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(v)
    };
    Ok(HeaderOps {
        set: pairs(&h.set)?,
        add: pairs(&h.add)?,
        remove: h
            .remove
            .iter()
            .map(|n| http::HeaderName::try_from(n.as_str()).map_err(|e| bad(format!("{n}: {e}"))))
            .collect::<Result<_, _>>()?,
    })
}

fn destination(d: &Option<pb::Destination>, field: &str) -> Result<Destination, FieldError> {
    let d = d
        .as_ref()
        .ok_or_else(|| (field.to_string(), "missing".to_string()))?;
    if d.service.is_empty() {
        return Err((format!("{field}.service"), "must name a service".into()));
    }
    Ok(Destination {
        service: d.service.clone(),
        subset: Some(d.subset.clone()).filter(|s| !s.is_empty()),
        port: u16::try_from(d.port).ok().filter(|p| *p != 0),
    })
}

fn status(code: u32, field: &str) -> Result<http::StatusCode, FieldError> {
    u16::try_from(code)
        .ok()
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .ok_or_else(|| (field.to_string(), format!("{code} is not an HTTP status")))
}

fn action(r: &pb::HttpRoute) -> Result<Action, FieldError> {
    if let Some(d) = &r.direct_response {
        return Ok(Action::Direct {
            status: status(d.status, "directResponse.status")?,
            body: bytes::Bytes::from(d.body.clone()),
        });
    }
    if let Some(rd) = &r.redirect {
        let nonempty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        return Ok(Action::Redirect {
            uri: nonempty(&rd.uri),
            authority: nonempty(&rd.authority),
            scheme: nonempty(&rd.scheme),
            port: u16::try_from(rd.port).ok().filter(|p| *p != 0),
            status: status(
                if rd.status == 0 { 301 } else { rd.status },
                "redirect.status",
            )?,
        });
    }
    let destinations: Vec<WeightedDestination> = r
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let f = format!("destinations[{i}]");
            Ok(WeightedDestination {
                dest: destination(&d.destination, &f)?,
                weight: d.weight,
                request_headers: header_ops(&d.request_headers, &format!("{f}.requestHeaders"))?,
                response_headers: header_ops(&d.response_headers, &format!("{f}.responseHeaders"))?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    let total_weight = u32::try_from(total).map_err(|_| {
        (
            "destinations".to_string(),
            format!("weights sum to {total}, above 2^32-1"),
        )
    })?;
    if destinations.is_empty() || total_weight == 0 {
        return Err((
            "destinations".into(),
            "a forwarding route needs at least one destination with a weight".into(),
        ));
    }
    Ok(Action::Forward {
        destinations,
        total_weight,
    })
}

fn retry_on(list: &[String]) -> RetryOn {
    let mut on = RetryOn::default();
    for c in list {
        match c.trim() {
            "5xx" => on.any_5xx = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "refused-stream" => on.refused_stream = true,
            "cancelled" => on.grpc.push(1),
            "deadline-exceeded" => on.grpc.push(4),
            "resource-exhausted" => on.grpc.push(8),
            "internal" => on.grpc.push(13),
            "unavailable" => on.grpc.push(14),
            other => {
                if let Ok(code) = other.parse::<u16>() {
                    on.status_codes.push(code);
                }
            }
        }
    }
    on
}

fn compile_route(r: &pb::HttpRoute) -> Result<Route, FieldError> {
    let fault = r.fault.as_ref().map_or(Ok(Fault::default()), |f| {
        Ok::<_, FieldError>(Fault {
            delay: ms(f.delay_ms).map(|d| (d, f.delay_percent)),
            abort: match f.abort_status {
                0 => None,
                s => Some((status(s, "fault.abortStatus")?, f.abort_percent)),
            },
        })
    })?;
    Ok(Route {
        name: r.name.clone(),
        matches: r
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| compile_match(m, i))
            .collect::<Result<_, _>>()?,
        action: action(r)?,
        request_headers: header_ops(&r.request_headers, "requestHeaders")?,
        response_headers: header_ops(&r.response_headers, "responseHeaders")?,
        rewrite: r.rewrite.as_ref().map(|rw| Rewrite {
            uri: Some(rw.uri.clone()).filter(|u| !u.is_empty()),
            full_path: rw.replace_full_path,
            authority: Some(rw.authority.clone()).filter(|a| !a.is_empty()),
        }),
        timeout: ms(r.timeout_ms),
        retry: r
            .retry
            .as_ref()
            .map(|rt| RetryPolicy {
                attempts: rt.attempts,
                per_try_timeout: ms(rt.per_try_timeout_ms),
                on: retry_on(&rt.retry_on),
            })
            .unwrap_or_default(),
        fault,
        mirrors: r
            .mirrors
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Ok(Mirror {
                    dest: destination(&m.destination, &format!("mirrors[{i}]"))?,
                    percent: m.percent,
                })
            })
            .collect::<Result<_, FieldError>>()?,
    })
}
