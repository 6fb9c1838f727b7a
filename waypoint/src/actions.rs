//! What a matched route does to a request before it goes upstream, and the answers it gives without one: header
//! hygiene (hop-by-hop headers, upgrades), Istio's and Gateway API's rewrites, weighted destinations, direct
//! responses and redirects. Pure functions of the route and the request.

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, LOCATION};
use http::{HeaderMap, StatusCode};
use rand::Rng;

use crate::reply::{response, Forwarded};
use crate::routes::{Action, Match, Route, StrMatch, WeightedDestination};
use mesh_core::metrics::ResponseFlags;

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: <protocol>`).
pub fn upgrade_of(h: &HeaderMap) -> Option<http::HeaderValue> {
    let asks = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| h.get(http::header::UPGRADE).cloned())
        .flatten()
}

pub fn pick_weighted(destinations: &[WeightedDestination], total: u32) -> &WeightedDestination {
    if destinations.len() == 1 {
        return &destinations[0];
    }
    let mut n = rand::rng().random_range(0..total.max(1));
    for d in destinations {
        if n < d.weight {
            return d;
        }
        n -= d.weight;
    }
    &destinations[destinations.len() - 1]
}

pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers the client named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    let te_trailers = h
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("trailers"));
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
    // gRPC needs `te: trailers` end to end.
    if te_trailers {
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Istio's `rewrite.uri` replaces the matched prefix (the whole path for other matches); Gateway API's
/// `ReplaceFullPath` replaces the whole path.
pub fn rewrite(
    route: &Route,
    matched: Option<&Match>,
    path: String,
    authority: String,
) -> (String, String) {
    let Some(rw) = &route.rewrite else {
        return (path, authority);
    };
    let authority = rw.authority.clone().unwrap_or(authority);
    let Some(uri) = &rw.uri else {
        return (path, authority);
    };
    // Istio rewrites a route without a uri match as if it matched prefix "/".
    let root = StrMatch::Prefix("/".into());
    let path = match matched.and_then(|m| m.uri.as_ref()).or(Some(&root)) {
        Some(StrMatch::Prefix(p)) if !rw.full_path && path.starts_with(p.as_str()) => {
            let rest = &path[p.len()..];
            // Joining "/" + "/rest" must not double the slash.
            if uri.ends_with('/') && rest.starts_with('/') {
                format!("{uri}{}", &rest[1..])
            } else {
                format!("{uri}{rest}")
            }
        }
        _ => {
            let query = path.split_once('?').map(|(_, q)| q);
            match query {
                Some(q) if !uri.contains('?') => format!("{uri}?{q}"),
                _ => uri.clone(),
            }
        }
    };
    (path, authority)
}

/// Envoy's shadow host: `svc:80` → `svc-shadow:80`.
pub fn shadow(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

/// A `directResponse`: the configured status and body, nothing else.
pub fn direct(status: StatusCode, body: Bytes) -> Forwarded {
    answer(status, "", body)
}

fn answer(status: StatusCode, content_type: &str, body: Bytes) -> Forwarded {
    Forwarded {
        resp: response(status, content_type, body),
        flags: ResponseFlags::None,
        upstream: None,
        retries: 0,
    }
}

/// A redirect: `Location` from the route's parts and the request's.
pub fn redirect(action: &Action, authority: &str, path: &str) -> Forwarded {
    let Action::Redirect {
        uri,
        authority: to_authority,
        scheme,
        port,
        status,
    } = action
    else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            Bytes::from_static(b"not a redirect"),
        );
    };
    let host = to_authority.as_deref().unwrap_or(authority);
    let host = match port {
        Some(p) => format!("{}:{p}", host.split(':').next().unwrap_or(host)),
        None => host.to_string(),
    };
    // Envoy keeps the query string when it replaces the path.
    let new_path = match (uri, path.split_once('?')) {
        (Some(u), Some((_, q))) if !u.contains('?') => format!("{u}?{q}"),
        (Some(u), _) => u.clone(),
        (None, _) => path.to_string(),
    };
    let location = format!("{}://{host}{new_path}", scheme.as_deref().unwrap_or("http"));
    let mut f = answer(*status, "text/plain", Bytes::new());
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        f.resp.headers_mut().insert(LOCATION, v);
    }
    f
}
