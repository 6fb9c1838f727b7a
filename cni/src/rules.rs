//! The redirection rules inside a pod's network namespace: the pod's outgoing TCP to ztunnel's 15001, incoming
//! TCP to 15006, HBONE on 15008 untouched. Our own nat chains, so removal is exact; sockets carrying the mesh
//! mark (ztunnel's own) are never captured.

use std::io::Write;
use std::process::{Command, Stdio};

use mesh_core::netns::NetNs;
use mesh_core::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, MESH_SOCKET_MARK, OUTBOUND_PORT};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("entering network namespace {netns}: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error("iptables in network namespace {netns}: {reason}")]
    Iptables { netns: String, reason: String },
}

/// The rules, as `iptables-restore --noflush` input.
pub fn rules() -> String {
    let mark = format!("{MESH_SOCKET_MARK:#x}/0xfff");
    format!(
        "*nat
:MESH_PRERT - [0:0]
:MESH_OUTPUT - [0:0]
-A PREROUTING -j MESH_PRERT
-A OUTPUT -j MESH_OUTPUT
-A MESH_PRERT -m mark --mark {mark} -j RETURN
-A MESH_PRERT -p tcp --dport {HBONE_PORT} -j RETURN
-A MESH_PRERT -p tcp ! -d 127.0.0.1/32 -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}
-A MESH_OUTPUT -m mark --mark {mark} -j RETURN
-A MESH_OUTPUT -o lo -j RETURN
-A MESH_OUTPUT -p tcp ! -d 127.0.0.1/32 -j REDIRECT --to-ports {OUTBOUND_PORT}
COMMIT
"
    )
}

/// Installs the rules (replacing any earlier copy).
pub fn install(ns: &NetNs) -> Result<(), RulesError> {
    in_ns(ns, |netns| {
        remove_here(netns)?;
        install_here(netns)
    })
}

/// Removes the rules; the pod's traffic flows as without the mesh.
pub fn remove(ns: &NetNs) -> Result<(), RulesError> {
    in_ns(ns, remove_here)
}

fn in_ns(ns: &NetNs, f: impl FnOnce(&str) -> Result<(), RulesError>) -> Result<(), RulesError> {
    let name = ns.path().display().to_string();
    // The iptables child inherits this thread's namespace.
    ns.run(|| f(&name)).map_err(|source| RulesError::Netns {
        netns: name.clone(),
        source,
    })?
}

fn install_here(netns: &str) -> Result<(), RulesError> {
    let fail = |reason: String| RulesError::Iptables {
        netns: netns.to_string(),
        reason,
    };
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run iptables-restore: {e}")))?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(rules().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(())
}

fn remove_here(netns: &str) -> Result<(), RulesError> {
    let ipt = |args: &[&str]| {
        Command::new("iptables")
            .args(["-w", "-t", "nat"])
            .args(args)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(|e| RulesError::Iptables {
                netns: netns.to_string(),
                reason: format!("cannot run iptables: {e}"),
            })
    };
    while ipt(&["-D", "PREROUTING", "-j", "MESH_PRERT"])? {}
    while ipt(&["-D", "OUTPUT", "-j", "MESH_OUTPUT"])? {}
    for chain in ["MESH_PRERT", "MESH_OUTPUT"] {
        ipt(&["-F", chain])?;
        ipt(&["-X", chain])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_marked_and_hbone() {
        let r = rules();
        assert!(r.contains("--mark 0x539/0xfff -j RETURN"));
        assert!(r.contains("--dport 15008 -j RETURN"));
        assert!(r.contains("REDIRECT --to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
    }
}
