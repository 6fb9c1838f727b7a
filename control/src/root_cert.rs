//! Istio's `istio-ca-root-cert` ConfigMap (`root-cert.pem`) in every namespace, as istiod publishes it: how
//! ztunnel, waypoints and workloads learn the mesh root to trust the control plane. Written by the Lease holder.

use std::collections::BTreeSet;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use mesh_model::ConfigSet;

/// Istio's name, which the charts and the waypoint Deployments mount.
pub const CONFIG_MAP: &str = "istio-ca-root-cert";

pub struct RootCertPublisher {
    client: Client,
    root_pem: String,
    /// Namespaces published to (so a config change re-applies nothing).
    published: BTreeSet<String>,
}

impl RootCertPublisher {
    pub fn new(client: Client, root_pem: String) -> Self {
        Self {
            client,
            root_pem,
            published: BTreeSet::new(),
        }
    }

    /// After losing the Lease: the next leader re-applies (a no-op when nothing changed).
    pub fn forget(&mut self) {
        self.published.clear();
    }

    /// Publishes the ConfigMap in each namespace that does not have it from us yet; returns the API calls made.
    pub async fn reconcile(&mut self, set: &ConfigSet) -> Result<usize, kube::Error> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "ConfigMap"),
            "configmaps",
        );
        let params = PatchParams::apply("mesh-control").force();
        let mut calls = 0;
        for ns in set.namespaces().map(|n| n.metadata.name.clone()) {
            if self.published.contains(&ns) {
                continue;
            }
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": CONFIG_MAP, "namespace": ns,
                    "labels": {"app.kubernetes.io/managed-by": "mesh-control"}},
                "data": {"root-cert.pem": self.root_pem},
            });
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &ar)
                .patch(CONFIG_MAP, &params, &Patch::Apply(&cm))
                .await?;
            calls += 1;
            self.published.insert(ns);
        }
        Ok(calls)
    }
}
