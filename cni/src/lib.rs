//! The node agent (Istio's istio-cni): everything that decides which pods of a node are in the mesh and captures
//! their traffic for ztunnel.
//!
//! - [`plugin`]: the chained CNI plugin the container runtime runs at each pod's creation and deletion;
//! - [`install`]: puts that plugin on the node and chains it into the node's CNI config;
//! - [`agent`]: the long-running agent: pod membership by label (Kubernetes mode), the pods' redirection rules
//!   ([`rules`]), and ZDS, the protocol that hands each pod's network namespace to ztunnel.

pub mod agent;
pub mod event;
pub mod install;
pub mod plugin;
pub mod rules;
