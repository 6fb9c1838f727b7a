//! ztunnel's side of ZDS: connect to the node agent's socket, say hello, then apply each request and acknowledge
//! it. The agent replays every pod after a (re)connect and ends the replay with `SnapshotSent`, when pods it did
//! not name are stopped. While the agent is away (restarting), enrolled pods keep running.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatch;
use mesh_core::netns::NetNs;
use mesh_core::zds::ZdsSocket;
use mesh_proto::istio::workload::zds::{
    workload_request::Payload, workload_response, Ack, Version, WorkloadRequest, WorkloadResponse,
    ZdsHello,
};

use super::{PodMeta, Pods};

/// Runs the client on a thread of its own until the process drains.
pub fn spawn(pods: Arc<Pods>, socket: PathBuf, drain: DrainWatch) -> std::io::Result<()> {
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("zds".into())
        .spawn(move || {
            // Enrolling a pod spawns its listeners' tasks.
            let _rt = rt.enter();
            let mut backoff = mesh_primitives::backoff::Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(2),
            );
            let mut connected_once = true;
            while !drain.is_stopping() {
                match ZdsSocket::connect(&socket) {
                    Ok(sock) => {
                        tracing::info!(socket = %socket.display(), "connected to the node agent");
                        backoff.reset();
                        connected_once = true;
                        match session(&pods, &sock) {
                            Ok(()) => tracing::warn!("node agent closed the connection; reconnecting (pods keep running)"),
                            Err(e) => tracing::warn!(error = %e, "node agent connection failed; reconnecting (pods keep running)"),
                        }
                    }
                    Err(e) => {
                        if connected_once {
                            tracing::info!(socket = %socket.display(), error = %e, "node agent not reachable yet; retrying");
                            connected_once = false;
                        }
                    }
                }
                std::thread::sleep(backoff.next_delay());
            }
        })?;
    Ok(())
}

/// One connection: hello, then requests until the agent closes.
pub fn session(pods: &Pods, sock: &ZdsSocket) -> std::io::Result<()> {
    sock.send(
        &ZdsHello {
            version: Version::V1 as i32,
        },
        None,
    )?;
    // Pods named since this connection began; `None` once the snapshot is complete.
    let mut named: Option<HashSet<String>> = Some(HashSet::new());
    while let Some((req, fd)) = sock.recv::<WorkloadRequest>()? {
        let result = apply(pods, &mut named, req, fd);
        if let Err(e) = &result {
            tracing::error!(error = %e, "node agent request failed");
        }
        let ack = Ack {
            error: result.err().unwrap_or_default(),
        };
        sock.send(
            &WorkloadResponse {
                payload: Some(workload_response::Payload::Ack(ack)),
            },
            None,
        )?;
    }
    Ok(())
}

fn apply(
    pods: &Pods,
    named: &mut Option<HashSet<String>>,
    req: WorkloadRequest,
    fd: Option<std::os::fd::OwnedFd>,
) -> Result<(), String> {
    let note = |named: &mut Option<HashSet<String>>, uid: &str| {
        if let Some(n) = named.as_mut() {
            n.insert(uid.to_string());
        }
    };
    match req.payload {
        Some(Payload::Add(add)) => {
            let info = add.workload_info.unwrap_or_default();
            let meta = PodMeta {
                uid: add.uid.clone(),
                name: info.name,
                namespace: info.namespace,
                service_account: info.service_account,
            };
            if meta.uid.is_empty() {
                return Err("add without a uid".into());
            }
            let netns = fd
                .map(NetNs::from_fd)
                .transpose()
                .map_err(|e| format!("pod {}: passed namespace unusable: {e}", add.uid))?;
            pods.add(meta, netns).map_err(|e| e.to_string())?;
            note(named, &add.uid);
            Ok(())
        }
        Some(Payload::Keep(keep)) => match named {
            Some(_) => {
                note(named, &keep.uid);
                Ok(())
            }
            None => Err("keep after the snapshot was sent".into()),
        },
        Some(Payload::Del(del)) => {
            pods.remove(&del.uid);
            Ok(())
        }
        Some(Payload::SnapshotSent(_)) => {
            // A second one would name nothing and stop every pod: refused.
            let Some(seen) = named.take() else {
                return Err("snapshot already sent on this connection".into());
            };
            pods.retain(&seen);
            tracing::info!(pods = seen.len(), "node agent snapshot applied");
            Ok(())
        }
        None => Err("request without a payload".into()),
    }
}
