//! Finding a running pod's network namespace on the host: the one namespace (among those pinned under
//! `/var/run/netns` and those of every process in `/proc`) whose interfaces carry the pod's IP. A pod IP is
//! unique on a node, and hostNetwork pods are never looked up, so the match is exact.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mesh_core::netns::NetNs;

/// Where to look: the host's `/proc` (mounted elsewhere in a container) and its pinned namespaces.
#[derive(Clone, Debug)]
pub struct Finder {
    pub proc_dir: PathBuf,
    pub netns_dirs: Vec<PathBuf>,
}

impl Default for Finder {
    fn default() -> Self {
        Self {
            proc_dir: PathBuf::from("/proc"),
            netns_dirs: vec![PathBuf::from("/var/run/netns"), PathBuf::from("/run/netns")],
        }
    }
}

impl Finder {
    /// The namespace holding `ip`, and the path it was opened at. Blocking: enters each candidate namespace.
    pub fn find(&self, ip: IpAddr) -> Option<(PathBuf, NetNs)> {
        let own = NetNs::open("/proc/thread-self/ns/net")
            .and_then(|n| n.inode())
            .ok();
        let mut seen: HashSet<u64> = own.into_iter().collect();
        for path in self.candidates() {
            let Ok(ns) = NetNs::open(&path) else { continue };
            let Ok(inode) = ns.inode() else { continue };
            if !seen.insert(inode) {
                continue;
            }
            if ns.addresses().is_ok_and(|a| a.contains(&ip)) {
                return Some((path, ns));
            }
        }
        None
    }

    fn candidates(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in &self.netns_dirs {
            out.extend(entries(dir));
        }
        let procs = entries(&self.proc_dir).into_iter().filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        });
        out.extend(procs.map(|p| p.join("ns/net")));
        out
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    out.sort();
    out
}
