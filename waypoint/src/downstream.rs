//! The downstream side of one tunnel: who called (verified identity, address, workload) and which service it
//! asked for. Made once per HBONE stream by the listener, read by every stage of a request.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::workload::state::{Service, Workload};
use mesh_primitives::identity::Identity;

/// The downstream side of one tunnel: who called, and which service it asked for.
#[derive(Clone)]
pub struct Downstream {
    pub service: Arc<Service>,
    pub port: u16,
    pub peer_identity: Option<Identity>,
    pub client_addr: SocketAddr,
    pub client: Option<Arc<Workload>>,
    pub h2: bool,
}

impl Downstream {
    pub fn service_key(&self) -> String {
        self.service.key().unwrap_or_else(|| {
            mesh_primitives::names::service_key(&self.service.name, &self.service.namespace)
        })
    }
}
