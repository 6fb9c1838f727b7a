//! Kubernetes mode: every Gateway of class `istio-waypoint` gets its waypoint, as istiod does: a ServiceAccount
//! named after the Gateway (the waypoint's identity), a Deployment running the `waypoint` image, and a Service
//! (labelled with the Gateway's name, so the workload API gives the Service's VIP as the waypoint address).
//! Objects are server-side applied (field manager `mesh-control`) only when their content changes, and deleted
//! when their Gateway goes away; each is owned by its Gateway (`ownerReferences`), so Kubernetes' garbage collector
//! also removes those of a Gateway deleted while no control plane was running.

use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;

use mesh_model::{ConfigSet, Gateway, LABEL_GATEWAY_NAME};

/// How the waypoints are deployed (from the control plane's config).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WaypointDeployment {
    pub image: String,
    /// The control plane as waypoints reach it (`CA_ADDR`).
    pub control_plane_address: String,
    pub trust_domain: String,
}

impl Default for WaypointDeployment {
    fn default() -> Self {
        Self {
            image: "ghcr.io/mesh/waypoint:latest".into(),
            control_plane_address: "https://istiod.istio-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mesh-control");

fn labels(gw: &str) -> serde_json::Value {
    serde_json::json!({
        LABEL_GATEWAY_NAME: gw,
        // Not captured by ztunnel: the waypoint terminates HBONE itself.
        "istio.io/dataplane-mode": "none",
        MANAGED_BY.0: MANAGED_BY.1,
    })
}

/// The three objects of one waypoint, as (api resource, object).
pub fn manifests(gw: &Gateway, d: &WaypointDeployment) -> Vec<(ApiResource, serde_json::Value)> {
    let (ns, name) = (gw.metadata.namespace.as_str(), gw.metadata.name.as_str());
    let mut meta = serde_json::json!({"name": name, "namespace": ns, "labels": labels(name)});
    // Owned by the Gateway: Kubernetes' garbage collector removes them with it, even when the Gateway is deleted
    // while no control plane runs. (No blockOwnerDeletion: it would need rights on gateways/finalizers.)
    if !gw.metadata.uid.is_empty() {
        meta["ownerReferences"] = serde_json::json!([{
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "name": name, "uid": gw.metadata.uid, "controller": true,
        }]);
    }
    let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
    let env = serde_json::json!([
        {"name": "WAYPOINT_NAME", "value": name},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "SERVICE_ACCOUNT", "value": name},
        {"name": "TRUST_DOMAIN", "value": d.trust_domain},
        {"name": "CA_ADDR", "value": d.control_plane_address},
        {"name": "CA_ROOT_CERT", "value": "/var/run/secrets/istio/root-cert.pem"},
        {"name": "CA_TOKEN_FILE", "value": "/var/run/secrets/tokens/istio-token"},
    ]);
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {LABEL_GATEWAY_NAME: name}},
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "waypoint", "image": d.image, "env": env,
                        "ports": [
                            {"name": "hbone", "containerPort": 15008},
                            {"name": "metrics", "containerPort": 15020},
                            {"name": "status", "containerPort": 15021},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
                            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
                        ],
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
                    ],
                },
            },
        },
    });
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {
            "selector": {LABEL_GATEWAY_NAME: name},
            "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "all"}],
        },
    });
    let gvk = |g: &str, v: &str, k: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
    };
    vec![
        (gvk("", "v1", "ServiceAccount", "serviceaccounts"), sa),
        (gvk("apps", "v1", "Deployment", "deployments"), deployment),
        (gvk("", "v1", "Service", "services"), service),
    ]
}

/// Keeps the cluster's waypoint objects in line with the waypoint Gateways.
pub struct Deployer {
    client: Client,
    config: WaypointDeployment,
    /// (namespace, name) → the objects last applied.
    applied: BTreeMap<(String, String), Vec<(ApiResource, serde_json::Value)>>,
}

impl Deployer {
    pub fn new(client: Client, config: WaypointDeployment) -> Self {
        Self {
            client,
            config,
            applied: BTreeMap::new(),
        }
    }

    fn api(&self, ns: &str, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, ar)
    }

    /// After losing the Lease: what this replica applied is no longer its to track (the new leader re-applies,
    /// server-side apply makes that a no-op when nothing changed).
    pub fn forget(&mut self) {
        self.applied.clear();
    }

    /// Applies what changed and deletes what is gone; returns how many API calls it made.
    pub async fn reconcile(&mut self, set: &ConfigSet) -> Result<usize, kube::Error> {
        let mut calls = 0;
        let wanted: BTreeMap<(String, String), Vec<_>> = set
            .gateways()
            .filter(|g| g.is_waypoint())
            .map(|g| {
                let key = (g.metadata.namespace.clone(), g.metadata.name.clone());
                (key, manifests(g, &self.config))
            })
            .collect();
        let params = PatchParams::apply("mesh-control").force();
        for (key, objects) in &wanted {
            if self.applied.get(key) == Some(objects) {
                continue;
            }
            for (ar, obj) in objects {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                self.api(&key.0, ar)
                    .patch(name, &params, &Patch::Apply(obj))
                    .await?;
                calls += 1;
            }
            tracing::info!(namespace = %key.0, gateway = %key.1, "waypoint deployed");
            self.applied.insert(key.clone(), objects.clone());
        }
        let gone: Vec<_> = self
            .applied
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            for (ar, _) in self.applied.remove(&key).unwrap_or_default() {
                match self
                    .api(&key.0, &ar)
                    .delete(&key.1, &DeleteParams::background())
                    .await
                {
                    Ok(_) => calls += 1,
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            tracing::info!(namespace = %key.0, gateway = %key.1, "waypoint removed");
        }
        Ok(calls)
    }
}
