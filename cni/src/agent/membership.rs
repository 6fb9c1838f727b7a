//! Which pods are in the mesh, as Istio decides: the namespace (or the pod itself) is labelled
//! `istio.io/dataplane-mode=ambient` and the pod does not opt out with `istio.io/dataplane-mode=none`. Pods on the
//! node's network and pods with an Istio sidecar are never captured.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
pub const AMBIENT: &str = "ambient";
pub const NONE: &str = "none";
const SIDECAR_STATUS: &str = "sidecar.istio.io/status";

/// `Ok` when the pod is in the mesh, else why not.
pub fn decide(namespace: Option<&Namespace>, pod: &Pod) -> Result<(), String> {
    let empty = BTreeMap::new();
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let pod_mode = pod_labels.get(DATAPLANE_MODE).map(String::as_str);
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Err("the pod uses the node's network (hostNetwork)".into());
    }
    if pod_mode == Some(NONE) {
        return Err(format!("the pod is labelled {DATAPLANE_MODE}={NONE}"));
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(SIDECAR_STATUS)) {
        return Err("the pod has an Istio sidecar".into());
    }
    if pod_mode == Some(AMBIENT) {
        return Ok(());
    }
    let ns_mode = namespace
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(DATAPLANE_MODE))
        .map(String::as_str);
    match ns_mode {
        Some(AMBIENT) => Ok(()),
        _ => Err(format!(
            "namespace {} is not labelled {DATAPLANE_MODE}={AMBIENT}",
            pod.metadata.namespace.as_deref().unwrap_or("default")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: serde_json::Value) -> Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "prod", "labels": labels}}))
            .unwrap()
    }

    fn pod(labels: serde_json::Value, host_network: bool) -> Pod {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "web", "namespace": "prod", "labels": labels},
            "spec": {"hostNetwork": host_network, "containers": []}}),
        )
        .unwrap()
    }

    #[test]
    fn istio_rules() {
        let ambient = ns(serde_json::json!({"istio.io/dataplane-mode": "ambient"}));
        let plain = ns(serde_json::json!({}));
        let none = serde_json::json!({"istio.io/dataplane-mode": "none"});
        let opt_in = serde_json::json!({"istio.io/dataplane-mode": "ambient"});
        assert!(decide(Some(&ambient), &pod(serde_json::json!({}), false)).is_ok());
        let why = decide(Some(&plain), &pod(serde_json::json!({}), false)).unwrap_err();
        assert!(why.contains("namespace prod is not labelled"), "{why}");
        assert!(decide(Some(&ambient), &pod(none, false)).is_err());
        assert!(decide(Some(&plain), &pod(opt_in, false)).is_ok());
        assert!(decide(Some(&ambient), &pod(serde_json::json!({}), true)).is_err());
        assert!(decide(None, &pod(serde_json::json!({}), false)).is_err());
    }
}
