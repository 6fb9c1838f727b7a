//! ztunnel's side of delta xDS: `istio.workload.Address` resources become the state snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::control::{apply_delta, versions_of, Held, XdsHandler};
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use mesh_proto::istio::security::Authorization;
use mesh_proto::istio::workload::{address, Address};

use crate::workload::authz::Policies;
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use crate::workload::state::{
    LocalState, Service, ServicePort, Snapshot, StateStore, TunnelProtocol, Workload,
    WorkloadStatus,
};

pub struct WorkloadHandler {
    store: StateStore,
    /// name → (version, resource), as last accepted.
    addresses: Held<Address>,
    /// name → (version, policy), as last accepted.
    authorizations: Held<Authorization>,
}

impl WorkloadHandler {
    pub fn new(store: StateStore) -> Self {
        Self {
            store,
            addresses: BTreeMap::new(),
            authorizations: BTreeMap::new(),
        }
    }
}

impl WorkloadHandler {
    /// Compiles the whole new policy set; one bad policy NACKs the response and the old set keeps applying.
    fn apply_authorizations(&mut self, resp: &DeltaDiscoveryResponse) -> Result<(), String> {
        let next = apply_delta(&self.authorizations, resp)?;
        let policies = Policies::compile(next.values().map(|(_, p)| p))?;
        tracing::info!(policies = policies.len(), "authorization policies applied");
        self.store.store_policies(policies);
        self.authorizations = next;
        Ok(())
    }
}

impl XdsHandler for WorkloadHandler {
    fn type_urls(&self) -> Vec<String> {
        vec![ADDRESS_TYPE_URL.into(), AUTHORIZATION_TYPE_URL.into()]
    }

    fn versions(&self, type_url: &str) -> HashMap<String, String> {
        match type_url {
            ADDRESS_TYPE_URL => versions_of(&self.addresses),
            _ => versions_of(&self.authorizations),
        }
    }

    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Result<(), String> {
        if resp.type_url == AUTHORIZATION_TYPE_URL {
            return self.apply_authorizations(resp);
        }
        if resp.type_url != ADDRESS_TYPE_URL {
            return Err(format!("unexpected type {}", resp.type_url));
        }
        let next = apply_delta(&self.addresses, resp)?;
        let local = to_local_state(next.values().map(|(_, a)| a))?;
        let snap = Snapshot::build(local).map_err(|e| e.to_string())?;
        tracing::info!(
            workloads = snap.source.workloads.len(),
            services = snap.source.services.len(),
            "state from xDS applied"
        );
        self.store.store(snap);
        self.addresses = next;
        Ok(())
    }
}

fn ip(bytes: &[u8], what: &str) -> Result<IpAddr, String> {
    super::ip_from_bytes(bytes).ok_or_else(|| format!("{what}: address of {} bytes", bytes.len()))
}

/// A waypoint named by address (the form this control plane sends). A waypoint named by hostname is resolved
/// by Istio's own ztunnel through DNS-like lookups this mesh does not do, so it is refused rather than ignored.
fn waypoint(
    gw: Option<&mesh_proto::istio::workload::GatewayAddress>,
    what: &str,
) -> Result<Option<SocketAddr>, String> {
    use mesh_proto::istio::workload::gateway_address::Destination;
    let Some(gw) = gw else { return Ok(None) };
    let port = match gw.hbone_mtls_port {
        0 => crate::HBONE_PORT,
        p => u16::try_from(p).map_err(|_| format!("{what}: waypoint port {p} out of range"))?,
    };
    match &gw.destination {
        Some(Destination::Address(a)) => Ok(Some(SocketAddr::new(ip(&a.address, what)?, port))),
        Some(Destination::Hostname(h)) => Err(format!(
            "{what}: waypoint {}/{} named by hostname is not supported; send its address",
            h.namespace, h.hostname
        )),
        None => Err(format!("{what}: waypoint without a destination")),
    }
}

/// Istio's workload API as the state's shape.
pub fn to_local_state<'a>(
    addresses: impl Iterator<Item = &'a Address>,
) -> Result<LocalState, String> {
    let mut out = LocalState::default();
    for a in addresses {
        match &a.r#type {
            Some(address::Type::Workload(w)) => {
                let what = format!("Workload {}/{}", w.namespace, w.name);
                let first = w
                    .addresses
                    .first()
                    .ok_or_else(|| format!("{what}: no address"))?;
                let mut labels = BTreeMap::new();
                if !w.canonical_name.is_empty() {
                    labels.insert("app".to_string(), w.canonical_name.clone());
                }
                if !w.canonical_revision.is_empty() {
                    labels.insert("version".to_string(), w.canonical_revision.clone());
                }
                let services = w
                    .services
                    .iter()
                    .map(|(k, pl)| {
                        let ports = pl
                            .ports
                            .iter()
                            .map(|p| ServicePort {
                                port: p.service_port as u16,
                                target_port: Some(p.target_port as u16).filter(|t| *t != 0),
                            })
                            .collect();
                        (k.clone(), ports)
                    })
                    .collect();
                out.workloads.push(Workload {
                    name: w.name.clone(),
                    namespace: w.namespace.clone(),
                    service_account: if w.service_account.is_empty() {
                        "default".into()
                    } else {
                        w.service_account.clone()
                    },
                    ip: ip(first, &what)?,
                    node: w.node.clone(),
                    labels,
                    protocol: if w.tunnel_protocol == 1 {
                        TunnelProtocol::Hbone
                    } else {
                        TunnelProtocol::None
                    },
                    status: if w.status == 1 {
                        WorkloadStatus::Unhealthy
                    } else {
                        WorkloadStatus::Healthy
                    },
                    services,
                    authorization_policies: w.authorization_policies.clone(),
                });
            }
            Some(address::Type::Service(s)) => {
                let what = format!("Service {}/{}", s.namespace, s.name);
                let Some(vip) = s.addresses.first() else {
                    // Headless services have no VIP to capture; their pods are reached by IP.
                    continue;
                };
                out.services.push(Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    vip: ip(&vip.address, &what)?,
                    ports: s
                        .ports
                        .iter()
                        .map(|p| ServicePort {
                            port: p.service_port as u16,
                            target_port: Some(p.target_port as u16).filter(|t| *t != 0),
                        })
                        .collect(),
                    selector: BTreeMap::new(),
                    hostname: Some(s.hostname.clone()),
                    waypoint: waypoint(s.waypoint.as_ref(), &what)?,
                });
            }
            None => return Err("Address with neither workload nor service".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::envoy::service::discovery::v3::Resource as XdsResource;
    use mesh_proto::istio::workload::Workload as PbWorkload;

    fn res(name: &str, ip: [u8; 4]) -> XdsResource {
        let a = Address {
            r#type: Some(address::Type::Workload(PbWorkload {
                uid: name.into(),
                name: name.into(),
                namespace: "ns".into(),
                addresses: vec![ip.to_vec()],
                node: "n1".into(),
                tunnel_protocol: 1,
                ..Default::default()
            })),
        };
        XdsResource {
            name: name.into(),
            version: format!("{ip:?}"),
            resource: Some(prost_types::Any::from_msg(&a).unwrap()),
            ..Default::default()
        }
    }

    fn resp(resources: Vec<XdsResource>, removed: Vec<&str>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            resources,
            removed_resources: removed.into_iter().map(String::from).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn applies_updates_and_removals_and_nacks_invalid_sets_atomically() {
        let store = StateStore::default();
        let mut h = WorkloadHandler::new(store.clone());
        h.apply(&resp(
            vec![res("a", [198, 18, 1, 2]), res("b", [198, 18, 1, 3])],
            vec![],
        ))
        .unwrap();
        assert_eq!(store.load().source.workloads.len(), 2);
        // A duplicate IP makes the whole response invalid: NACK, nothing of it applied.
        let err = h
            .apply(&resp(
                vec![res("c", [198, 18, 1, 2]), res("d", [198, 18, 1, 9])],
                vec![],
            ))
            .unwrap_err();
        assert!(err.contains("field ip"), "{err}");
        assert_eq!(store.load().source.workloads.len(), 2);
        assert_eq!(
            h.versions(ADDRESS_TYPE_URL).len(),
            2,
            "versions reported on reconnect are the accepted ones"
        );
        h.apply(&resp(vec![], vec!["a"])).unwrap();
        let names: Vec<String> = store
            .load()
            .source
            .workloads
            .iter()
            .map(|w| w.name.clone())
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn undecodable_resource_is_rejected_with_its_name() {
        let mut h = WorkloadHandler::new(StateStore::default());
        let mut bad = res("x", [198, 18, 1, 2]);
        bad.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
        let err = h.apply(&resp(vec![bad], vec![])).unwrap_err();
        assert!(err.contains("resource x"), "{err}");
    }
}
