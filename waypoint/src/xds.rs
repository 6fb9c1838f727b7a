//! The waypoint's side of delta xDS: `istio.workload.Address` (workloads and services, shared with ztunnel's
//! handling) and this project's `mesh.l7.v1.L7Service`, compiled and swapped atomically. A resource that does
//! not compile NACKs the whole response and the previous config keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::control::XdsHandler;
use mesh_core::workload::state::StateStore;
use mesh_core::workload::xds::WorkloadHandler;
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use mesh_proto::mesh::l7::v1::L7Service;
use mesh_proto::{ADDRESS_TYPE_URL, L7_SERVICE_TYPE_URL};

use crate::routes::{compile, L7Config, ServiceRoutes};

/// The compiled L7 config and its generation (clusters pick up a new policy when it changes).
#[derive(Default)]
pub struct L7Snapshot {
    pub config: L7Config,
    pub generation: usize,
}

pub type L7Store = Arc<ArcSwap<L7Snapshot>>;

pub struct WaypointHandler {
    workloads: WorkloadHandler,
    l7: BTreeMap<String, (String, Arc<ServiceRoutes>)>,
    store: L7Store,
}

impl WaypointHandler {
    pub fn new(state: StateStore, store: L7Store) -> Self {
        Self {
            workloads: WorkloadHandler::new(state),
            l7: BTreeMap::new(),
            store,
        }
    }

    fn apply_l7(&mut self, resp: &DeltaDiscoveryResponse) -> Result<(), String> {
        let mut next = self.l7.clone();
        for name in &resp.removed_resources {
            next.remove(name);
        }
        for r in &resp.resources {
            let any = r
                .resource
                .as_ref()
                .ok_or_else(|| format!("resource {}: empty", r.name))?;
            let svc: L7Service = any
                .to_msg()
                .map_err(|e| format!("resource {}: {e}", r.name))?;
            let compiled = compile(&svc).map_err(|e| e.to_string())?;
            next.insert(r.name.clone(), (r.version.clone(), Arc::new(compiled)));
        }
        let services = next
            .values()
            .map(|(_, s)| (s.key.clone(), s.clone()))
            .collect();
        let generation = self.store.load().generation + 1;
        self.store.store(Arc::new(L7Snapshot {
            config: L7Config { services },
            generation,
        }));
        tracing::info!(services = next.len(), generation, "L7 config applied");
        self.l7 = next;
        Ok(())
    }
}

impl XdsHandler for WaypointHandler {
    fn type_urls(&self) -> Vec<String> {
        vec![ADDRESS_TYPE_URL.into(), L7_SERVICE_TYPE_URL.into()]
    }

    fn versions(&self, type_url: &str) -> HashMap<String, String> {
        match type_url {
            L7_SERVICE_TYPE_URL => self
                .l7
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
            other => self.workloads.versions(other),
        }
    }

    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Result<(), String> {
        match resp.type_url.as_str() {
            L7_SERVICE_TYPE_URL => self.apply_l7(resp),
            ADDRESS_TYPE_URL => self.workloads.apply(resp),
            other => Err(format!("unexpected type {other}")),
        }
    }
}
