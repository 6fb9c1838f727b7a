//! The agent's socket for the CNI plugin: one event per connection, answered once the pod is captured (or
//! skipped, or released). In Kubernetes mode the pod's membership is decided as for running pods.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use mesh_core::netns::NetNs;

use super::{Agent, PodRecord};
use crate::event::{Command, PluginEvent, Reply};

/// Who decides whether a new pod is in the mesh.
#[derive(Clone)]
pub enum Admission {
    /// Every pod the plugin reports (the local lab, where the runtime is the test harness).
    All,
    /// The Kubernetes view: the pod's and its namespace's labels.
    Kubernetes(super::kube::View),
}

/// Serves plugin events on a thread of its own; `rt` runs Kubernetes lookups.
pub fn spawn(
    agent: Arc<Agent>,
    listener: UnixListener,
    admission: Admission,
    rt: tokio::runtime::Handle,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cni-events".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let (agent, admission, rt) = (agent.clone(), admission.clone(), rt.clone());
                        let spawned = std::thread::Builder::new()
                            .name("cni-event".into())
                            .spawn(move || serve(&agent, &admission, &rt, stream));
                        if let Err(e) = spawned {
                            tracing::error!(error = %e, "cannot start a thread for a CNI event");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a CNI event");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(())
}

fn serve(agent: &Agent, admission: &Admission, rt: &tokio::runtime::Handle, stream: UnixStream) {
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<PluginEvent>(&line) {
        Ok(ev) => handle(agent, admission, rt, ev),
        Err(e) => Reply::Error {
            message: format!("unreadable event: {e}"),
        },
    };
    let mut out = serde_json::to_string(&reply).expect("a reply always serializes");
    out.push('\n');
    let _ = (&stream).write_all(out.as_bytes());
}

pub fn handle(
    agent: &Agent,
    admission: &Admission,
    rt: &tokio::runtime::Handle,
    ev: PluginEvent,
) -> Reply {
    let pod = format!("{}/{}", ev.namespace, ev.name);
    match ev.command {
        Command::Del => match agent.release(&ev.uid) {
            Ok(_) => Reply::Removed,
            Err(e) => Reply::Error {
                message: e.to_string(),
            },
        },
        Command::Add => {
            let service_account = match admission {
                Admission::All => String::new(),
                Admission::Kubernetes(view) => {
                    match rt.block_on(view.admit(&ev.namespace, &ev.name)) {
                        Ok(sa) => sa,
                        Err(super::kube::Refusal::NotInMesh(reason)) => {
                            tracing::info!(pod, reason, "new pod not in the mesh");
                            return Reply::Skipped { reason };
                        }
                        // Unknown labels must not let a pod start outside the mesh it may belong to.
                        Err(super::kube::Refusal::Lookup(message)) => {
                            tracing::warn!(
                                pod,
                                message,
                                "cannot tell whether a new pod is in the mesh"
                            );
                            return Reply::Error { message };
                        }
                    }
                }
            };
            let netns = match NetNs::open(&ev.netns) {
                Ok(n) => n,
                Err(e) => {
                    return Reply::Error {
                        message: format!(
                            "pod {pod}: network namespace {}: {e}",
                            ev.netns.display()
                        ),
                    }
                }
            };
            let record = PodRecord {
                uid: ev.uid,
                name: ev.name,
                namespace: ev.namespace,
                service_account,
                netns: ev.netns,
                ips: ev.ips,
                enrolled_at: 0,
            };
            match agent.enroll(record, netns) {
                Ok(_) => Reply::Enrolled,
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            }
        }
    }
}
