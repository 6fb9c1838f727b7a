//! The waypoint's side of delta xDS: `istio.workload.Address` (workloads and services, shared with ztunnel's
//! handling) and this project's `mesh.l7.v1.L7Service`, compiled and swapped atomically. A resource that does
//! not compile NACKs the whole response and the previous config keeps serving.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::control::{apply_delta, versions_of, Held, XdsHandler};
use mesh_core::workload::state::StateStore;
use mesh_core::workload::xds::WorkloadHandler;
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use mesh_proto::mesh::l7::v1::L7Service;
use mesh_proto::{ADDRESS_TYPE_URL, L7_SERVICE_TYPE_URL};

use crate::routes::{compile, L7Config};

/// The compiled L7 config and its generation (clusters pick up a new policy when it changes).
#[derive(Default)]
pub struct L7Snapshot {
    pub config: L7Config,
    pub generation: usize,
}

pub type L7Store = Arc<ArcSwap<L7Snapshot>>;

pub struct WaypointHandler {
    workloads: WorkloadHandler,
    l7: Held<L7Service>,
    store: L7Store,
}

impl WaypointHandler {
    pub fn new(state: StateStore, store: L7Store) -> Self {
        Self {
            workloads: WorkloadHandler::new(state),
            l7: Held::new(),
            store,
        }
    }

    fn apply_l7(&mut self, resp: &DeltaDiscoveryResponse) -> Result<(), String> {
        let next = apply_delta::<L7Service>(&self.l7, resp)?;
        // Compiled whole: one resource that does not compile NACKs the response.
        let services = next
            .values()
            .map(|(_, s)| {
                Ok((
                    format!("{}/{}", s.namespace, s.hostname),
                    Arc::new(compile(s).map_err(|e| e.to_string())?),
                ))
            })
            .collect::<Result<_, String>>()?;
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
            L7_SERVICE_TYPE_URL => versions_of(&self.l7),
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
