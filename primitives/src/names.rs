//! Names Istio derives from the cluster domain. Kubernetes lets a cluster pick another domain; like Istio's
//! default install, the mesh assumes `cluster.local`, and this is the one place that says so.

/// The cluster DNS suffix of Service FQDNs.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A Service's fully qualified name: `<name>.<namespace>.svc.cluster.local`.
pub fn hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// `<namespace>/<fqdn>`: how Istio's workload API keys a Service (resource names, a workload's `services` map) and
/// how L7 resources name their destinations.
pub fn service_key(name: &str, namespace: &str) -> String {
    format!("{namespace}/{}", hostname(name, namespace))
}

/// The xDS node id Istio's proxies send: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
pub fn xds_node_id(proxy_type: &str, pod: &str, namespace: &str) -> String {
    format!("{proxy_type}~0.0.0.0~{pod}.{namespace}~{namespace}.svc.{CLUSTER_DOMAIN}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_forms() {
        assert_eq!(hostname("order", "shop"), "order.shop.svc.cluster.local");
        assert_eq!(
            service_key("order", "shop"),
            "shop/order.shop.svc.cluster.local"
        );
        assert_eq!(
            xds_node_id("ztunnel", "node1", "istio-system"),
            "ztunnel~0.0.0.0~node1.istio-system~istio-system.svc.cluster.local"
        );
    }
}
