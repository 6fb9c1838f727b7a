//! Pieces every kind shares: object metadata, well-known labels, int-or-string ports and Istio-style durations.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

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

/// The part of Kubernetes `metadata` this mesh uses. Other fields (uid, resourceVersion, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
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

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected a number followed by a unit (h, m, s, ms, us, ns), e.g. \"1.5s\"")]
    Syntax(String),
    #[error("invalid duration {0:?}: unknown unit {1:?} (use h, m, s, ms, us or ns)")]
    Unit(String, String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parse a duration as Istio and the Gateway API write them: Go `time.ParseDuration` syntax without a sign,
/// e.g. `30s`, `1.5s`, `500ms`, `1m`, `1h`, `1h30m`. A bare `0` is accepted, as in Go.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let syntax = || DurationError::Syntax(text.to_string());
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            "" => return Err(syntax()),
            other => return Err(DurationError::Unit(text.to_string(), other.to_string())),
        };
        // Split "1.5" into integer and fraction by hand so "0.1s" is exact (no float rounding).
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(syntax());
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| syntax())?
        };
        let mut frac_nanos: u128 = 0;
        let mut div = scale;
        for digit in frac_part.chars() {
            div /= 10;
            let d = digit.to_digit(10).ok_or_else(syntax)?;
            frac_nanos += u128::from(d) * div;
        }
        total_nanos = int
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total_nanos))
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(text.to_string()))?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000)
        .expect("remainder of a division by 1e9 fits in u32");
    Ok(Duration::new(secs, nanos))
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
    /// Writes the shortest exact Istio form: whole seconds as `30s`, otherwise milliseconds or nanoseconds,
    /// so a dumped config parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_millis() * 1_000_000 == d.subsec_nanos() {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
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
    fn durations_in_istio_forms() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "30", "s", "1.5.1s", "-1s", "3x", "1 s", "abc", ".s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(parse_duration("3d"), Err(DurationError::Unit(_, u)) if u == "d"));
    }

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
