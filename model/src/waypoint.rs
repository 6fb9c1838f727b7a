//! Waypoints: which one a Service uses, where it is reached, and which pods are waypoints.
//!
//! A waypoint is a Gateway of class `istio-waypoint`. Its pods and its Service carry the label
//! `gateway.networking.k8s.io/gateway-name: <gateway>` (set by the Gateway controller in Kubernetes, by hand in
//! file mode).

use std::net::IpAddr;

use super::{
    ConfigSet, Gateway, ObjectMeta, Pod, Service, LABEL_GATEWAY_NAME, LABEL_USE_WAYPOINT,
    LABEL_USE_WAYPOINT_NAMESPACE,
};

/// A waypoint named by `istio.io/use-waypoint` (and `istio.io/use-waypoint-namespace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UseWaypoint<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// What `meta`'s labels say: `Some(None)` for an explicit `none`, `Some(Some(..))` for a waypoint, `None` when
/// the object does not say. `own_ns` is where the waypoint is looked for without a namespace label.
fn labelled<'a>(meta: &'a ObjectMeta, own_ns: &'a str) -> Option<Option<UseWaypoint<'a>>> {
    let name = meta.label(LABEL_USE_WAYPOINT)?;
    if name == "none" {
        return Some(None);
    }
    let namespace = meta.label(LABEL_USE_WAYPOINT_NAMESPACE).unwrap_or(own_ns);
    Some(Some(UseWaypoint { namespace, name }))
}

/// The waypoint a Service's traffic goes through: the Service's own label, else its Namespace's; `none` on the
/// Service opts it out of its Namespace's waypoint. A waypoint's own Service never uses a waypoint (its traffic
/// would loop).
pub fn service_waypoint<'a>(set: &'a ConfigSet, svc: &'a Service) -> Option<UseWaypoint<'a>> {
    if svc.metadata.label(LABEL_GATEWAY_NAME).is_some() {
        return None;
    }
    let ns = svc.metadata.namespace.as_str();
    if let Some(own) = labelled(&svc.metadata, ns) {
        return own;
    }
    set.namespace(ns)
        .and_then(|n| labelled(&n.metadata, ns))
        .flatten()
}

/// Where the waypoint Gateway `namespace/name` is reached: the cluster IP of the Service labelled with its name,
/// else the address of one of its pods (file mode and tests often run the waypoint as a bare Pod).
pub fn waypoint_address(set: &ConfigSet, namespace: &str, name: &str) -> Option<IpAddr> {
    let implements = |meta: &ObjectMeta| {
        meta.namespace == namespace && meta.label(LABEL_GATEWAY_NAME) == Some(name)
    };
    let service_ip = set
        .services()
        .filter(|s| implements(&s.metadata))
        .find_map(Service::cluster_ip);
    service_ip.or_else(|| {
        set.pods()
            .filter(|p| implements(&p.metadata))
            .find_map(Pod::ip)
    })
}

/// The Gateway a waypoint reference names, if it exists and is a waypoint.
pub fn waypoint_gateway<'a>(set: &'a ConfigSet, w: UseWaypoint<'_>) -> Option<&'a Gateway> {
    set.gateway(w.namespace, w.name).filter(|g| g.is_waypoint())
}

/// A pod implementing a Gateway is a waypoint unless its Gateway is known to be of another class (an ingress
/// gateway's pods carry the same label). A waypoint speaks HBONE itself and gets its own certificate.
pub fn is_waypoint_pod(set: &ConfigSet, pod: &Pod) -> bool {
    let Some(gateway) = pod.metadata.label(LABEL_GATEWAY_NAME) else {
        return false;
    };
    set.gateway(&pod.metadata.namespace, gateway)
        .is_none_or(Gateway::is_waypoint)
}
