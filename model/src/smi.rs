//! `split.smi-spec.io` TrafficSplit (v1alpha1 to v1alpha4): weighted split of a root Service's traffic
//! over backend Services.

use std::collections::BTreeMap;
use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::meta::ObjectMeta;
use super::validate::{check_host, Findings};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrafficSplit {
    pub metadata: ObjectMeta,
    pub spec: TrafficSplitSpec,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha2",
    kind = "TrafficSplit",
    doc = "SMI weighted split of a Service over backend Services",
    plural = "trafficsplits",
    namespaced,
    root = "TrafficSplitResource"
)]
#[serde(default)]
pub struct TrafficSplitSpec {
    /// The root Service clients address (name in the split's namespace, or FQDN).
    pub service: String,
    pub backends: Vec<TrafficSplitBackend>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TrafficSplitBackend {
    pub service: String,
    /// Relative weight. Integers are taken as written; v1alpha1 Kubernetes quantities (`"500m"`, `"1"`) are
    /// converted to milli-units, so weights within one split stay in proportion.
    #[serde(deserialize_with = "weight")]
    #[schemars(schema_with = "super::schema::int_or_string")]
    pub weight: i64,
}

impl TrafficSplitSpec {
    pub fn total_weight(&self) -> i64 {
        self.backends.iter().map(|b| b.weight.max(0)).sum()
    }
}

fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer weight or a quantity such as \"500m\"")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("weight too large"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i64, E> {
            let bad = || {
                E::custom(format!(
                    "invalid weight {v:?}: expected an integer or a quantity like \"500m\""
                ))
            };
            let (digits, scale) = match v.strip_suffix('m') {
                Some(milli) => (milli, 1),
                None => (v, 1000),
            };
            let n: i64 = digits.parse().map_err(|_| bad())?;
            n.checked_mul(scale).ok_or_else(bad)
        }
    }
    d.deserialize_any(Visitor)
}

impl TrafficSplit {
    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        f.required("spec.service", &s.service);
        if !s.service.is_empty() {
            f.check("spec.service", check_host(&s.service));
        }
        if s.backends.is_empty() {
            f.error("spec.backends", "at least one backend is required");
        }
        let mut seen = BTreeMap::new();
        for (i, b) in s.backends.iter().enumerate() {
            let path = format!("spec.backends[{i}]");
            f.required(format!("{path}.service"), &b.service);
            if !b.service.is_empty() {
                f.check(format!("{path}.service"), check_host(&b.service));
                if let Some(first) = seen.insert(b.service.as_str(), i) {
                    f.error(
                        format!("{path}.service"),
                        format!("duplicate of spec.backends[{first}].service"),
                    );
                }
            }
            if b.weight < 0 {
                f.error(format!("{path}.weight"), "must not be negative");
            }
        }
        if !s.backends.is_empty() && s.backends.iter().all(|b| b.weight <= 0) {
            f.error(
                "spec.backends",
                "weights add up to 0: no backend would get traffic",
            );
        }
    }
}
