//! Shared library of the mesh: everything two processes (ztunnel, waypoint, control) need alike.
//!
//! - [`identity`]: SPIFFE identities and the workload certificates that carry them.
//! - [`tls`]: rustls configurations for mutual TLS where the only identity is a SPIFFE URI SAN.
//! - [`ca`]: a certificate authority used as the built-in development CA (and by the control plane).
//! - [`hbone`]: HTTP/2 CONNECT tunnels over mTLS (client pool and server).
//! - [`drain`]: the one graceful-shutdown primitive.
//! - [`metrics`] and [`admin`]: prometheus-client registries and the small admin HTTP server.
//! - [`config`]: typed config loading (file + environment).
//! - [`control`]: the client side of the control plane: CA (certificates) and delta xDS (config).
//! - [`certs`]: a proxy's workload certificates, fetched ahead of need and renewed at half-life.
//! - [`workload`]: workloads and services (Istio's workload API) as one snapshot, from a file or xDS.
//! - [`netns`] and [`socket`]: network namespaces, original destination, socket marks.

pub mod admin;
pub mod buffers;
pub mod ca;
pub mod certs;
pub mod config;
pub mod control;
pub mod drain;
pub mod hbone;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod relay;
pub mod socket;
pub mod tls;
pub mod workload;
pub mod zds;

/// Mark set on every socket the mesh opens, so the pod's redirection rules let them pass (Istio uses the same value).
pub const MESH_SOCKET_MARK: u32 = 0x539;
/// HBONE inbound port (Istio's).
pub const HBONE_PORT: u16 = 15008;
/// Captured outbound traffic port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Captured plaintext inbound traffic port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
