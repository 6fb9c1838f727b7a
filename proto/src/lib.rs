//! Protobuf messages and gRPC services spoken by the mesh.
//!
//! The `.proto` files under `proto/proto/` were written for this project.
//! They are not copies of upstream files, but they are wire-compatible with
//! Istio's and Envoy's published APIs: the proto packages, message names,
//! field numbers, field types and enum values are the same, so the type URLs
//! (`type.googleapis.com/istio.workload.Address`, ...) and gRPC method paths
//! (`/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`,
//! `/istio.v1.auth.IstioCertificateService/CreateCertificate`) match those
//! used by istiod and ztunnel.
//!
//! Modules mirror proto packages:
//!
//! * [`istio::workload`] — `Address`, `Workload`, `Service`, ... (WDS)
//! * [`istio::workload::zds`] — the node agent ⇄ ztunnel protocol (ZDS)
//! * [`istio::security`] — `Authorization` and its rules (L4 RBAC)
//! * [`istio::v1::auth`] — `IstioCertificateService` (CA client/server)
//! * [`envoy::service::discovery::v3`] — ADS, delta and state-of-the-world
//! * [`envoy::config::core::v3`] — `Node`, `Locality`, `ControlPlane`, `Metadata`
//! * [`google::rpc`] — `Status`
//!
//! Well-known types (`google.protobuf.*`) are [`prost_types`]. Every message
//! implements [`prost::Name`], whose `type_url()` uses the
//! `type.googleapis.com/` prefix, so [`prost_types::Any::from_msg`] and
//! [`prost_types::Any::to_msg`] work directly.

pub use prost;
pub use prost_types;

/// Type URL of workload discovery resources ([`istio::workload::Address`]).
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of authorization resources ([`istio::security::Authorization`]).
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of the waypoint's L7 resources ([`mesh::l7::v1::L7Service`]), this project's own type.
pub const L7_SERVICE_TYPE_URL: &str = "type.googleapis.com/mesh.l7.v1.L7Service";

/// This project's own APIs.
pub mod mesh {
    /// Package `mesh.l7`.
    pub mod l7 {
        /// The waypoint's L7 configuration (`mesh.l7.v1`).
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            tonic::include_proto!("mesh.l7.v1");
        }
    }
}

/// Istio APIs.
pub mod istio {
    /// Workload discovery resources (`istio.workload`).
    pub mod workload {
        #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        tonic::include_proto!("istio.workload");

        /// How the node agent hands pods to ztunnel (`istio.workload.zds`).
        pub mod zds {
            #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            tonic::include_proto!("istio.workload.zds");
        }
    }

    /// Authorization resources (`istio.security`).
    pub mod security {
        #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        tonic::include_proto!("istio.security");
    }

    /// Package `istio.v1`.
    pub mod v1 {
        /// The Istio CA service (`istio.v1.auth`).
        pub mod auth {
            #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

/// Envoy data-plane APIs.
pub mod envoy {
    /// Package `envoy.config`.
    pub mod config {
        /// Package `envoy.config.core`.
        pub mod core {
            /// Common types (`envoy.config.core.v3`).
            pub mod v3 {
                #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }

    /// Package `envoy.service`.
    pub mod service {
        /// Package `envoy.service.discovery`.
        pub mod discovery {
            /// xDS / ADS (`envoy.service.discovery.v3`).
            pub mod v3 {
                #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

/// Google APIs.
pub mod google {
    /// Package `google.rpc`.
    pub mod rpc {
        #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        tonic::include_proto!("google.rpc");
    }
}

#[cfg(test)]
mod tests {
    //! Wire-compatibility checks against hand-computed encodings.
    //!
    //! A tag byte is `(field_number << 3) | wire_type`, as a varint; wire type
    //! 0 is varint, 2 is length-delimited.

    use std::collections::BTreeMap;

    use prost::{Message, Name};

    use super::envoy::config::core::v3 as core;
    use super::envoy::service::discovery::v3 as discovery;
    use super::google::rpc::Status;
    use super::istio::security as sec;
    use super::istio::v1::auth as ca;
    use super::istio::workload as wl;
    use super::*;

    #[test]
    fn address_with_workload_uid() {
        let addr = wl::Address {
            r#type: Some(wl::address::Type::Workload(wl::Workload {
                uid: "x".into(),
                ..Default::default()
            })),
        };
        // Address.workload = 1 (LEN) -> 0x0a; Workload.uid = 20 (LEN) -> 0xa2 0x01.
        let expected = [0x0a, 0x04, 0xa2, 0x01, 0x01, b'x'];
        assert_eq!(addr.encode_to_vec(), expected);
        assert_eq!(wl::Address::decode(&expected[..]).unwrap(), addr);
    }

    #[test]
    fn address_with_service() {
        let addr = wl::Address {
            r#type: Some(wl::address::Type::Service(wl::Service {
                hostname: "h".into(),
                canonical: true,
                ..Default::default()
            })),
        };
        // Address.service = 2 -> 0x12; Service.hostname = 3 -> 0x1a;
        // Service.canonical = 11 (VARINT) -> 0x58.
        let expected = [0x12, 0x05, 0x1a, 0x01, b'h', 0x58, 0x01];
        assert_eq!(addr.encode_to_vec(), expected);
    }

    #[test]
    fn workload_fields_at_istio_numbers() {
        let w = wl::Workload {
            service_account: "sa".into(),
            node: "n1".into(),
            ..Default::default()
        };
        // service_account = 7 -> 0x3a; node = 9 -> 0x4a.
        assert_eq!(
            w.encode_to_vec(),
            [0x3a, 0x02, b's', b'a', 0x4a, 0x02, b'n', b'1']
        );

        let w = wl::Workload {
            addresses: vec![vec![10, 0, 0, 1]],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            trust_domain: "td".into(),
            status: wl::WorkloadStatus::Unhealthy as i32,
            services: BTreeMap::from([(
                "a".to_string(),
                wl::PortList {
                    ports: vec![wl::Port {
                        service_port: 80,
                        target_port: 8080,
                    }],
                },
            )]),
            capacity: Some(3),
            ..Default::default()
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x1a, 0x04, 10, 0, 0, 1,        // addresses = 3
            0x28, 0x01,                     // tunnel_protocol = 5: HBONE
            0x32, 0x02, b't', b'd',         // trust_domain = 6
            0x88, 0x01, 0x01,               // status = 17: UNHEALTHY
            0xb2, 0x01, 0x0c,               // services = 22, entry of 12 bytes
                0x0a, 0x01, b'a',           //   key
                0x12, 0x07,                 //   value: PortList
                    0x0a, 0x05,             //     ports = 1
                        0x08, 0x50,         //       service_port = 80
                        0x10, 0x90, 0x3f,   //       target_port = 8080
            0xda, 0x01, 0x02, 0x08, 0x03,   // capacity = 27: UInt32Value{3}
        ];
        assert_eq!(w.encode_to_vec(), expected);
        assert_eq!(wl::Workload::decode(expected).unwrap(), w);
    }

    #[test]
    fn workload_enums_match_istio() {
        assert_eq!(wl::TunnelProtocol::None as i32, 0);
        assert_eq!(wl::TunnelProtocol::Hbone as i32, 1);
        assert_eq!(wl::WorkloadStatus::Healthy as i32, 0);
        assert_eq!(wl::WorkloadType::Pod as i32, 2);
        assert_eq!(wl::NetworkMode::HostNetwork as i32, 1);
        assert_eq!(wl::IpFamilies::Dual as i32, 3);
        assert_eq!(wl::load_balancing::Scope::Network as i32, 6);
        assert_eq!(wl::load_balancing::Mode::Passthrough as i32, 3);
        assert_eq!(wl::application_tunnel::Protocol::Proxy as i32, 1);
    }

    #[test]
    fn gateway_address() {
        let g = wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "h".into(),
                },
            )),
            hbone_mtls_port: 15008,
        };
        // hostname = 1 -> 0x0a; hbone_mtls_port = 3 -> 0x18, 15008 = 0xa0 0x75.
        let expected = [
            0x0a, 0x07, 0x0a, 0x02, b'n', b's', 0x12, 0x01, b'h', 0x18, 0xa0, 0x75,
        ];
        assert_eq!(g.encode_to_vec(), expected);
    }

    #[test]
    fn authorization_fields_at_istio_numbers() {
        let a = sec::Authorization {
            name: "p".into(),
            action: sec::Action::Deny as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        destination_ports: vec![80, 443],
                        service_accounts: vec![sec::ServiceAccountMatch {
                            namespace: "ns".into(),
                            service_account: "sa".into(),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            dry_run: true,
            ..Default::default()
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x0a, 0x01, b'p',                       // name = 1
            0x20, 0x01,                             // action = 4: DENY
            0x2a, 0x13,                             // rules = 5
                0x0a, 0x11,                         //   clauses = 1
                    0x12, 0x0f,                     //     matches = 2
                        0x4a, 0x03, 0x50, 0xbb, 0x03, // destination_ports = 9 (packed)
                        0x5a, 0x08,                 //       service_accounts = 11
                            0x0a, 0x02, b'n', b's',
                            0x12, 0x02, b's', b'a',
            0x30, 0x01,                             // dry_run = 6
        ];
        assert_eq!(a.encode_to_vec(), expected);
        assert_eq!(sec::Authorization::decode(expected).unwrap(), a);
        assert_eq!(sec::Scope::WorkloadSelector as i32, 2);
    }

    #[test]
    fn delta_discovery_request_envoy_numbers() {
        #[rustfmt::skip]
        let wire: &[u8] = &[
            0x0a, 0x03, 0x0a, 0x01, b'i',           // node = 1 { id = 1 }
            0x12, 0x01, b't',                       // type_url = 2
            0x1a, 0x01, b's',                       // resource_names_subscribe = 3
            0x22, 0x01, b'u',                       // resource_names_unsubscribe = 4
            0x2a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // initial_resource_versions = 5
            0x32, 0x01, b'n',                       // response_nonce = 6
            0x3a, 0x07,                             // error_detail = 7
                0x08, 0x03,                         //   code = 1
                0x12, 0x03, b'b', b'a', b'd',       //   message = 2
        ];
        let req = discovery::DeltaDiscoveryRequest::decode(wire).unwrap();
        assert_eq!(req.node.as_ref().unwrap().id, "i");
        assert_eq!(req.type_url, "t");
        assert_eq!(req.resource_names_subscribe, ["s"]);
        assert_eq!(req.resource_names_unsubscribe, ["u"]);
        assert_eq!(req.initial_resource_versions["k"], "v");
        assert_eq!(req.response_nonce, "n");
        assert_eq!(
            req.error_detail,
            Some(Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            })
        );
        assert_eq!(req.encode_to_vec(), wire);
    }

    #[test]
    fn delta_discovery_response_envoy_numbers() {
        let resp = discovery::DeltaDiscoveryResponse {
            system_version_info: "s".into(),
            resources: vec![discovery::Resource {
                name: "r".into(),
                version: "1".into(),
                aliases: vec!["a".into()],
                ..Default::default()
            }],
            type_url: "t".into(),
            nonce: "n".into(),
            removed_resources: vec!["x".into()],
            control_plane: Some(core::ControlPlane {
                identifier: "c".into(),
            }),
            ..Default::default()
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x0a, 0x01, b's',                       // system_version_info = 1
            0x12, 0x09,                             // resources = 2
                0x0a, 0x01, b'1',                   //   version = 1
                0x1a, 0x01, b'r',                   //   name = 3
                0x22, 0x01, b'a',                   //   aliases = 4
            0x22, 0x01, b't',                       // type_url = 4
            0x2a, 0x01, b'n',                       // nonce = 5
            0x32, 0x01, b'x',                       // removed_resources = 6
            0x3a, 0x03, 0x0a, 0x01, b'c',           // control_plane = 7
        ];
        assert_eq!(resp.encode_to_vec(), expected);
    }

    #[test]
    fn node_envoy_numbers() {
        let node = core::Node {
            id: "i".into(),
            cluster: "c".into(),
            locality: Some(core::Locality {
                region: "r".into(),
                zone: String::new(),
                sub_zone: "s".into(),
            }),
            user_agent_name: "u".into(),
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
                "v".into(),
            )),
            client_features: vec!["f".into()],
            ..Default::default()
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x0a, 0x01, b'i',                                   // id = 1
            0x12, 0x01, b'c',                                   // cluster = 2
            0x22, 0x06, 0x0a, 0x01, b'r', 0x1a, 0x01, b's',     // locality = 4
            0x32, 0x01, b'u',                                   // user_agent_name = 6
            0x3a, 0x01, b'v',                                   // user_agent_version = 7
            0x52, 0x01, b'f',                                   // client_features = 10
        ];
        assert_eq!(node.encode_to_vec(), expected);
    }

    #[test]
    fn sotw_discovery_envoy_numbers() {
        let req = discovery::DiscoveryRequest {
            version_info: "v".into(),
            type_url: "t".into(),
            response_nonce: "n".into(),
            ..Default::default()
        };
        // version_info = 1, type_url = 4, response_nonce = 5.
        assert_eq!(
            req.encode_to_vec(),
            [0x0a, 0x01, b'v', 0x22, 0x01, b't', 0x2a, 0x01, b'n']
        );
    }

    #[test]
    fn certificate_request_istio_numbers() {
        let req = ca::IstioCertificateRequest {
            csr: "c".into(),
            validity_duration: 3600,
            metadata: Some(prost_types::Struct {
                fields: [(
                    "k".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("v".into())),
                    },
                )]
                .into(),
            }),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x0a, 0x01, b'c',                       // csr = 1
            0x18, 0x90, 0x1c,                       // validity_duration = 3: 3600
            0x22, 0x0a,                             // metadata = 4: Struct
                0x0a, 0x08,                         //   fields = 1 (map entry)
                    0x0a, 0x01, b'k',
                    0x12, 0x03, 0x1a, 0x01, b'v',   //   Value.string_value = 3
        ];
        assert_eq!(req.encode_to_vec(), expected);

        let resp = ca::IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
            root_cert: None,
        };
        assert_eq!(resp.encode_to_vec(), [0x0a, 0x01, b'a', 0x0a, 0x01, b'b']);
    }

    #[test]
    fn type_urls() {
        assert_eq!(wl::Address::type_url(), ADDRESS_TYPE_URL);
        assert_eq!(sec::Authorization::type_url(), AUTHORIZATION_TYPE_URL);
        assert_eq!(
            discovery::DeltaDiscoveryRequest::full_name(),
            "envoy.service.discovery.v3.DeltaDiscoveryRequest"
        );

        let addr = wl::Address {
            r#type: Some(wl::address::Type::Service(wl::Service {
                name: "s".into(),
                ..Default::default()
            })),
        };
        let any = prost_types::Any::from_msg(&addr).unwrap();
        assert_eq!(any.type_url, ADDRESS_TYPE_URL);
        assert_eq!(any.to_msg::<wl::Address>().unwrap(), addr);
    }

    #[test]
    fn grpc_service_names() {
        use tonic::server::NamedService;
        assert_eq!(
            discovery::aggregated_discovery_service_server::SERVICE_NAME,
            "envoy.service.discovery.v3.AggregatedDiscoveryService"
        );
        assert_eq!(
            ca::istio_certificate_service_server::SERVICE_NAME,
            "istio.v1.auth.IstioCertificateService"
        );
        assert_eq!(
            <ca::istio_certificate_service_server::IstioCertificateServiceServer<Ca>>::NAME,
            "istio.v1.auth.IstioCertificateService"
        );
        assert_eq!(
            <discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer<Ads>>::NAME,
            "envoy.service.discovery.v3.AggregatedDiscoveryService"
        );
    }

    // Minimal service implementations that answer every call with
    // ALREADY_EXISTS (6), to tell "routed to the handler" apart from the
    // UNIMPLEMENTED (12) that the generated router returns for unknown paths.

    struct Ca;

    #[tonic::async_trait]
    impl ca::istio_certificate_service_server::IstioCertificateService for Ca {
        async fn create_certificate(
            &self,
            _: tonic::Request<ca::IstioCertificateRequest>,
        ) -> Result<tonic::Response<ca::IstioCertificateResponse>, tonic::Status> {
            Err(tonic::Status::already_exists("reached"))
        }
    }

    struct Ads;

    type Empty<T> = tonic::codegen::tokio_stream::Empty<Result<T, tonic::Status>>;

    #[tonic::async_trait]
    impl discovery::aggregated_discovery_service_server::AggregatedDiscoveryService for Ads {
        type StreamAggregatedResourcesStream = Empty<discovery::DiscoveryResponse>;
        type DeltaAggregatedResourcesStream = Empty<discovery::DeltaDiscoveryResponse>;

        async fn stream_aggregated_resources(
            &self,
            _: tonic::Request<tonic::Streaming<discovery::DiscoveryRequest>>,
        ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
            Err(tonic::Status::already_exists("reached"))
        }

        async fn delta_aggregated_resources(
            &self,
            _: tonic::Request<tonic::Streaming<discovery::DeltaDiscoveryRequest>>,
        ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
            Err(tonic::Status::already_exists("reached"))
        }
    }

    /// Sends one gRPC frame holding an empty (all-default) message to `path`
    /// and returns the grpc-status of the trailers-only answer.
    async fn grpc_status_for<S>(svc: &mut S, path: &str) -> String
    where
        S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
        S::Error: std::fmt::Debug,
    {
        let req = http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // Frame header: uncompressed flag 0, then a 4-byte big-endian
            // length of 0.
            .body(tonic::body::Body::new(String::from("\0\0\0\0\0")))
            .unwrap();
        let resp = svc.call(req).await.unwrap();
        resp.headers()
            .get("grpc-status")
            .expect("trailers-only response carries grpc-status")
            .to_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn grpc_method_paths() {
        let mut ca = ca::istio_certificate_service_server::IstioCertificateServiceServer::new(Ca);
        assert_eq!(
            grpc_status_for(
                &mut ca,
                "/istio.v1.auth.IstioCertificateService/CreateCertificate"
            )
            .await,
            "6"
        );
        assert_eq!(
            grpc_status_for(&mut ca, "/istio.v1.auth.IstioCertificateService/Nope").await,
            "12"
        );

        let mut ads =
            discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(
                Ads,
            );
        for method in ["DeltaAggregatedResources", "StreamAggregatedResources"] {
            let path = format!("/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}");
            assert_eq!(grpc_status_for(&mut ads, &path).await, "6", "{path}");
        }
        assert_eq!(
            grpc_status_for(
                &mut ads,
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope"
            )
            .await,
            "12"
        );
    }
}
