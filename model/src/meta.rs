//! Pieces every kind shares: object metadata, well-known labels, int-or-string ports and Istio-style durations.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mesh_primitives::duration::parse as parse_duration;
pub use mesh_primitives::duration::DurationError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Namespace (or Pod) label that enrolls workloads in the ambient mesh (`ambient`), or opts a pod out (`none`).
pub const LABEL_DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Namespace, Service, Pod or WorkloadEntry label naming the waypoint (a `Gateway`) that handles its traffic;
/// the value `none` opts out of an inherited waypoint.
pub const LABEL_USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Companion of [`LABEL_USE_WAYPOINT`] when the waypoint lives in another namespace.
pub const LABEL_USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Set by the Gateway controller on the pods and the Service that implement a Gateway: the Gateway's name. A pod
/// with it is a waypoint when its Gateway is one.
pub const LABEL_GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Gateway label: the traffic a waypoint handles: `service` (the default), `workload`, `all` or `none`.
pub const LABEL_WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Mesh extension: a WorkloadEntry has no node in Istio's API, but this mesh needs to know which node's
/// ztunnel serves it, so the node is named by this annotation on the WorkloadEntry's metadata.
pub const ANNOTATION_NODE: &str = "mesh.io/node";

/// The part of Kubernetes `metadata` this mesh uses. Other fields (resourceVersion, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// Kubernetes' uid (Kubernetes mode): what owner references name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Empty for cluster-scoped kinds (Namespace); the loader sets `default` for namespaced kinds that omit it.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// Shorthand for tests and code that builds objects by hand.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            ..Default::default()
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// Kubernetes label-selector semantics for `matchLabels`: every selector pair must be present in `labels`.
/// An empty selector selects everything, as in Kubernetes.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Kubernetes `IntOrString` (a Service's `targetPort`): a number or a named container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

/// A duration field (`timeout`, `interval`, ...). It is parsed while the object is read, so a bad value is
/// reported as an error at its field path and consumers only ever see a valid [`Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MeshDuration(pub Duration);

impl MeshDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for MeshDuration {
    fn from(d: Duration) -> Self {
        MeshDuration(d)
    }
}

impl fmt::Display for MeshDuration {
    /// The shortest exact Istio form, so a dumped config parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mesh_primitives::duration::format(self.0))
    }
}

impl Serialize for MeshDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MeshDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MeshDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"1.5s\", \"500ms\" or \"1m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MeshDuration, E> {
                parse_duration(v).map(MeshDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_round_trips_through_display() {
        for s in ["30s", "1500ms", "1ns", "0s"] {
            let d = MeshDuration(parse_duration(s).expect("valid"));
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(
            MeshDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }

    #[test]
    fn selector_semantics() {
        let labels: BTreeMap<_, _> = [
            ("app".to_string(), "a".to_string()),
            ("v".to_string(), "1".to_string()),
        ]
        .into();
        let sel: BTreeMap<_, _> = [("app".to_string(), "a".to_string())].into();
        assert!(labels_match(&sel, &labels));
        assert!(labels_match(&BTreeMap::new(), &labels));
        let other: BTreeMap<_, _> = [("app".to_string(), "b".to_string())].into();
        assert!(!labels_match(&other, &labels));
    }
}
