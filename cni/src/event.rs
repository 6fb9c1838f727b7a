//! What the CNI plugin tells the agent (one JSON line each way on `<runDir>/mesh-cni.sock`): a pod was created
//! (`ADD`) or deleted (`DEL`) on this node. The agent decides whether the pod is in the mesh, as for running pods,
//! so a pod is captured before its first packet exactly when its namespace (or the pod) says so.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The agent's socket for plugin events.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("mesh-cni.sock")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    #[serde(rename = "ADD")]
    Add,
    #[serde(rename = "DEL")]
    Del,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginEvent {
    pub command: Command,
    /// The pod's uid (`K8S_POD_UID`), or the sandbox id when the runtime gives none.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Its addresses, from the previous plugin's result.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Reply {
    /// The pod is captured and handed to ztunnel (or held for it, when ztunnel is not connected).
    Enrolled,
    /// Not in the mesh; why (e.g. its namespace is not labelled).
    Skipped {
        reason: String,
    },
    Removed,
    Error {
        message: String,
    },
}
