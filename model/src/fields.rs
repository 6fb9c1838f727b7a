//! Where each field of a kind's published API (Istio's, SMI's and Gateway API's) may appear, so an ignored field
//! can be told apart: one the API has at that position but this mesh does not implement is a warning that says
//! so; one the API does not have there is a mistake that rejects the object (`mtls: {mod: STRICT}` and
//! `spec: {mode: STRICT}` must not silently drop STRICT), with a suggestion when a known name is close or the
//! field belongs elsewhere. The trees come from the published CRD schemas (`model/src/published_fields.json`,
//! written by `scripts/published-fields.py`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::Kind;

/// Kinds of the mesh's API groups that the published APIs have but this mesh does not implement: skipped with a
/// warning, where any other kind of those groups is a mistake.
pub const UNSUPPORTED_KINDS: &[(&str, &str)] = &[
    ("networking.istio.io", "Gateway"),
    ("networking.istio.io", "ServiceEntry"),
    ("networking.istio.io", "Sidecar"),
    ("networking.istio.io", "EnvoyFilter"),
    ("networking.istio.io", "WorkloadGroup"),
    ("networking.istio.io", "ProxyConfig"),
    ("security.istio.io", "RequestAuthentication"),
    ("gateway.networking.k8s.io", "GatewayClass"),
    ("gateway.networking.k8s.io", "TCPRoute"),
    ("gateway.networking.k8s.io", "TLSRoute"),
    ("gateway.networking.k8s.io", "UDPRoute"),
    ("gateway.networking.k8s.io", "ReferenceGrant"),
    ("gateway.networking.k8s.io", "BackendTLSPolicy"),
    ("gateway.networking.k8s.io", "ListenerSet"),
    ("split.smi-spec.io", "TrafficSplitList"),
];

/// A field's children; `*` stands for any key (a map), `**` for anything below (free-form).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Node(BTreeMap<String, Node>);

/// What the published API says of a field a path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// The API has it there (the mesh ignores it).
    Published,
    /// The API has no such field there; `sibling` is a close name at that position, `elsewhere` where a field of
    /// that exact name is.
    Unknown {
        field: String,
        sibling: Option<String>,
        elsewhere: Option<String>,
    },
}

impl Node {
    fn child(&self, key: &str) -> Option<&Node> {
        self.0.get(key).or_else(|| self.0.get("*"))
    }

    /// Where `path` (`spec.http[0].route[1].weigth`; indexes ignored) stands in the API.
    pub fn place(&self, path: &str) -> Placement {
        let mut node = self;
        for segment in path.split('.').map(|s| s.split('[').next().unwrap_or(s)) {
            if node.0.contains_key("**") {
                return Placement::Published;
            }
            match node.child(segment) {
                Some(next) => node = next,
                None => {
                    let names = node
                        .0
                        .keys()
                        .map(String::as_str)
                        .filter(|k| !k.starts_with('*'));
                    return Placement::Unknown {
                        field: segment.to_string(),
                        sibling: did_you_mean(segment, names).map(str::to_string),
                        elsewhere: self.find(segment, ""),
                    };
                }
            }
        }
        Placement::Published
    }

    /// The shortest path (breadth first) at which a field named `name` is, e.g. `spec.mtls.mode`.
    fn find(&self, name: &str, prefix: &str) -> Option<String> {
        let mut level = vec![(prefix.to_string(), self)];
        while !level.is_empty() {
            let mut next = Vec::new();
            for (at, node) in level {
                for (key, child) in &node.0 {
                    let path = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    if key == name {
                        return Some(path);
                    }
                    next.push((path, child));
                }
            }
            level = next;
        }
        None
    }
}

/// The published field tree of `kind`, or `None` for core kinds (Namespace, Pod, Service, EndpointSlice),
/// whose many fields the mesh rightly ignores.
pub fn published(kind: Kind) -> Option<&'static Node> {
    static TREES: OnceLock<BTreeMap<String, Node>> = OnceLock::new();
    let trees = TREES.get_or_init(|| {
        serde_json::from_str(include_str!("published_fields.json"))
            .expect("published_fields.json is generated JSON of field trees")
    });
    match kind {
        Kind::Namespace | Kind::Pod | Kind::Service | Kind::EndpointSlice => None,
        other => trees.get(other.name()),
    }
}

/// The last field name of a path like `spec.http[0].route[1].weigth`.
pub fn leaf(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

pub use mesh_primitives::suggest::did_you_mean;

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(field: &str, sibling: Option<&str>, elsewhere: Option<&str>) -> Placement {
        Placement::Unknown {
            field: field.into(),
            sibling: sibling.map(Into::into),
            elsewhere: elsewhere.map(Into::into),
        }
    }

    #[test]
    fn places_fields_where_the_published_api_has_them() {
        let pa = published(Kind::PeerAuthentication).unwrap();
        assert_eq!(pa.place("spec.mtls.mode"), Placement::Published);
        assert_eq!(
            pa.place("spec.portLevelMtls.8080.mode"),
            Placement::Published
        );
        assert_eq!(
            pa.place("spec.mtls.mod"),
            unknown("mod", Some("mode"), None)
        );
        assert_eq!(
            pa.place("spec.mode"),
            unknown("mode", None, Some("spec.mtls.mode"))
        );
        let vs = published(Kind::VirtualService).unwrap();
        assert_eq!(vs.place("spec.http[0].corsPolicy"), Placement::Published);
        assert_eq!(
            vs.place("spec.http[1].route[0].weigth"),
            unknown("weigth", Some("weight"), None)
        );
        assert_eq!(
            vs.place("spec.http[0].match[0].headers.x-canary.exact"),
            Placement::Published
        );
        for kind in [
            Kind::DestinationRule,
            Kind::AuthorizationPolicy,
            Kind::WorkloadEntry,
            Kind::TrafficSplit,
            Kind::Gateway,
            Kind::HttpRoute,
            Kind::GrpcRoute,
        ] {
            assert!(published(kind).is_some(), "{kind:?}");
        }
        assert!(published(Kind::Pod).is_none());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("VirtualServce", ["VirtualService", "DestinationRule"]),
            Some("VirtualService")
        );
        assert_eq!(did_you_mean("colour", ["mode", "mtls"]), None);
        assert_eq!(leaf("spec.http[0].route[1].weigth"), "weigth");
        assert_eq!(leaf("spec.mtls.mod"), "mod");
    }
}
