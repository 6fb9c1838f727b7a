//! Waypoints in the workload API: a Service's waypoint address, waypoint pods as HBONE workloads with their own
//! identity, and the L7 resources published next to the addresses.

mod common;

use common::set_of;
use mesh_primitives::identity::Identity;
use mesh_proto::istio::workload::{
    address, gateway_address, Address, GatewayAddress, NetworkAddress, Service, TunnelProtocol,
    Workload,
};
use mesh_proto::mesh::l7::v1::L7Service;
use mesh_proto::{ADDRESS_TYPE_URL, L7_SERVICE_TYPE_URL};
use mesh_translate::{translate, Translated};

/// An ambient namespace whose services use waypoint `waypoint`; a Service and its pod, both on node1; the
/// waypoint's Gateway and its pod (labelled out of ambient capture, as Istio does).
const SHOP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: order, namespace: shop}
spec: {clusterIP: 198.19.96.1, selector: {app: order}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: order-1, namespace: shop, labels: {app: order}}
spec: {nodeName: node1, serviceAccountName: order}
status: {podIP: 198.18.1.1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-1
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec: {nodeName: node1, serviceAccountName: waypoint}
status: {podIP: 198.18.1.9}
---
";

fn address(out: &Translated, name: &str) -> address::Type {
    let resource = &out.resources[ADDRESS_TYPE_URL]
        .get(name)
        .unwrap_or_else(|| panic!("no address {name}"));
    let addr: Address = resource.body.to_msg().expect("an Address");
    addr.r#type.expect("a workload or a service")
}

fn service(out: &Translated, name: &str) -> Service {
    match address(out, name) {
        address::Type::Service(s) => s,
        other => panic!("not a service: {other:?}"),
    }
}

fn workload(out: &Translated, name: &str) -> Workload {
    match address(out, name) {
        address::Type::Workload(w) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

fn waypoint_at(ip: [u8; 4]) -> Option<GatewayAddress> {
    Some(GatewayAddress {
        destination: Some(gateway_address::Destination::Address(NetworkAddress {
            network: String::new(),
            address: ip.to_vec(),
        })),
        hbone_mtls_port: 15008,
    })
}

const ORDER: &str = "shop/order.shop.svc.cluster.local";

#[test]
fn a_service_gets_its_namespace_waypoint_at_the_waypoint_pod() {
    let out = translate(&set_of(SHOP), "cluster.local");
    assert_eq!(service(&out, ORDER).waypoint, waypoint_at([198, 18, 1, 9]));
}

#[test]
fn the_waypoint_service_address_is_preferred_over_its_pod() {
    let gateway_service = "apiVersion: v1\nkind: Service\nmetadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec: {clusterIP: 198.19.96.9, selector: {gateway.networking.k8s.io/gateway-name: waypoint}, ports: [{port: 15008}]}\n";
    let out = translate(
        &set_of(&format!("{SHOP}{gateway_service}")),
        "cluster.local",
    );
    assert_eq!(service(&out, ORDER).waypoint, waypoint_at([198, 19, 96, 9]));
    // The waypoint's own Service does not go through the waypoint.
    let own = service(&out, "shop/waypoint.shop.svc.cluster.local");
    assert_eq!(own.waypoint, None);
}

#[test]
fn service_labels_override_the_namespace() {
    let labelled = |labels: &str| {
        let yaml = SHOP.replace(
            "metadata: {name: order, namespace: shop}",
            &format!("metadata: {{name: order, namespace: shop, labels: {{{labels}}}}}"),
        );
        service(&translate(&set_of(&yaml), "cluster.local"), ORDER).waypoint
    };
    assert_eq!(labelled("istio.io/use-waypoint: none"), None, "opted out");
    assert_eq!(
        labelled("istio.io/use-waypoint: missing"),
        None,
        "no such Gateway"
    );
    // A waypoint in another namespace, named with use-waypoint-namespace.
    let elsewhere = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: shared, namespace: infra}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: shared-1, namespace: infra, labels: {gateway.networking.k8s.io/gateway-name: shared}}\nstatus: {podIP: 198.18.2.9}\n";
    let yaml = SHOP.replace(
        "metadata: {name: order, namespace: shop}",
        "metadata: {name: order, namespace: shop, labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra}}",
    );
    let out = translate(&set_of(&format!("{yaml}{elsewhere}")), "cluster.local");
    assert_eq!(service(&out, ORDER).waypoint, waypoint_at([198, 18, 2, 9]));
    // A waypoint for workloads only does not take Service traffic.
    let workload_only = SHOP.replace(
        "metadata: {name: waypoint, namespace: shop}",
        "metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: workload}}",
    );
    let out = translate(&set_of(&workload_only), "cluster.local");
    assert_eq!(service(&out, ORDER).waypoint, None);
}

#[test]
fn waypoint_pods_speak_hbone_and_keep_their_identity_from_ztunnel() {
    let out = translate(&set_of(SHOP), "cluster.local");
    let wp = workload(&out, "Kubernetes//Pod/shop/waypoint-1");
    assert_eq!(
        wp.tunnel_protocol,
        TunnelProtocol::Hbone as i32,
        "even labelled dataplane-mode none"
    );
    let ids = &out.nodes.0["node1"];
    assert!(ids.contains(&Identity::new("cluster.local", "shop", "order")));
    assert!(
        !ids.contains(&Identity::new("cluster.local", "shop", "waypoint")),
        "node1's ztunnel may not obtain the waypoint's certificate: {ids:?}"
    );
    // An ingress gateway's pods carry the same label but are ordinary (here: opted-out) workloads.
    let ingress = SHOP.replace(
        "gatewayClassName: istio-waypoint",
        "gatewayClassName: istio",
    );
    let out = translate(&set_of(&ingress), "cluster.local");
    let pod = workload(&out, "Kubernetes//Pod/shop/waypoint-1");
    assert_eq!(pod.tunnel_protocol, TunnelProtocol::None as i32);
}

#[test]
fn l7_resources_are_published_by_service_key() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: order, namespace: shop}\nspec: {hosts: [order], http: [{route: [{destination: {host: order}}]}]}\n";
    let out = translate(&set_of(&format!("{SHOP}{vs}")), "cluster.local");
    let l7 = &out.resources[L7_SERVICE_TYPE_URL];
    assert_eq!(l7.keys().collect::<Vec<_>>(), [ORDER]);
    let svc: L7Service = l7[ORDER].body.to_msg().expect("an L7Service");
    assert_eq!(svc.hostname, "order.shop.svc.cluster.local");
    assert_eq!(svc.routes.len(), 1);
    // Without routing config the type is still served, empty.
    let out = translate(&set_of(SHOP), "cluster.local");
    assert!(out.resources[L7_SERVICE_TYPE_URL].is_empty());
}

#[test]
fn a_service_without_selector_takes_its_endpoints_from_endpoint_slices() {
    let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: legacy-db, namespace: shop}
spec: {clusterIP: 198.19.96.9, ports: [{name: sql, port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-proxy, namespace: shop, labels: {app: db-proxy}}
spec: {nodeName: node1, serviceAccountName: db-proxy}
status: {podIP: 198.18.1.20}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-db-abc, namespace: shop, labels: {kubernetes.io/service-name: legacy-db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints:
- addresses: [198.18.1.20]
- addresses: [198.51.100.7]
- addresses: [198.51.100.8]
  conditions: {ready: false}
";
    let out = translate(&set_of(yaml), "cluster.local");
    let key = "shop/legacy-db.shop.svc.cluster.local";
    // A pod address: the pod backs the service, on the slice's port.
    let pod = workload(&out, "Kubernetes//Pod/shop/db-proxy");
    let ports = &pod.services[key].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (5432, 15432));
    // An address outside the cluster: a workload of its own, reached without HBONE.
    let ext = workload(
        &out,
        "Kubernetes/discovery.k8s.io/EndpointSlice/shop/legacy-db-abc/198.51.100.7",
    );
    assert_eq!(ext.tunnel_protocol, TunnelProtocol::None as i32);
    assert_eq!(ext.services[key].ports[0].target_port, 15432);
    // Not ready: not an endpoint.
    assert!(!out.resources[ADDRESS_TYPE_URL]
        .keys()
        .any(|k| k.ends_with("198.51.100.8")));
}
