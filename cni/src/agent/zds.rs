//! The agent's side of ZDS: listen on `<runDir>/ztunnel.sock`; when ztunnel connects and says hello, send every
//! held pod (its namespace as a descriptor), then `SnapshotSent`; afterwards single adds and deletes, each
//! answered by an ack. A newer connection replaces an older one (ztunnel restarted).

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::netns::NetNs;
use mesh_core::zds::{ZdsListener, ZdsSocket};
use mesh_proto::istio::workload::zds::{
    workload_request::Payload, workload_response, AddWorkload, DelWorkload, SnapshotSent, Version,
    WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};

use super::{Agent, PodRecord};

/// How long ztunnel has to answer one request.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts ztunnel connections on a thread of its own.
pub fn spawn(agent: Arc<Agent>, listener: ZdsListener) -> io::Result<()> {
    std::thread::Builder::new()
        .name("zds-server".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok(sock) => match agent.attach(sock) {
                    Ok(n) => tracing::info!(pods = n, "ztunnel connected; snapshot sent"),
                    Err(e) => {
                        tracing::warn!(error = %e, "ztunnel connection failed during the snapshot")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a ztunnel connection");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(())
}

impl Agent {
    /// Takes a new ztunnel connection: hello, the snapshot, then it receives every later change.
    pub fn attach(&self, sock: ZdsSocket) -> io::Result<usize> {
        sock.set_recv_timeout(Some(ACK_TIMEOUT))?;
        let (hello, _) = sock
            .recv::<ZdsHello>()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before hello"))?;
        if hello.version != Version::V1 as i32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ZDS version {} not supported (V1 only)", hello.version),
            ));
        }
        let mut inner = self.inner.lock().expect("agent lock");
        for held in inner.pods.values() {
            if let Err(reason) = add(&sock, &held.record, &held.netns)? {
                tracing::error!(pod = %held.record.display(), reason, "ztunnel refused a pod of the snapshot");
            }
        }
        let done = request(&sock, Payload::SnapshotSent(SnapshotSent {}), None)?;
        if let Err(reason) = done {
            tracing::error!(reason, "ztunnel refused the snapshot");
        }
        let n = inner.pods.len();
        inner.ztunnel = Some(sock);
        Ok(n)
    }
}

/// Sends one pod; the outer error is the connection's, the inner ztunnel's refusal.
pub fn add(sock: &ZdsSocket, record: &PodRecord, netns: &NetNs) -> io::Result<Result<(), String>> {
    let add = AddWorkload {
        uid: record.uid.clone(),
        workload_info: Some(WorkloadInfo {
            name: record.name.clone(),
            namespace: record.namespace.clone(),
            service_account: record.service_account.clone(),
        }),
    };
    request(sock, Payload::Add(add), Some(netns))
}

pub fn del(sock: &ZdsSocket, uid: &str) -> io::Result<Result<(), String>> {
    request(
        sock,
        Payload::Del(DelWorkload {
            uid: uid.to_string(),
        }),
        None,
    )
}

fn request(
    sock: &ZdsSocket,
    payload: Payload,
    netns: Option<&NetNs>,
) -> io::Result<Result<(), String>> {
    sock.send(
        &WorkloadRequest {
            payload: Some(payload),
        },
        netns.map(|n| n.as_fd()),
    )?;
    let (resp, _) = sock
        .recv::<WorkloadResponse>()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "ztunnel closed"))?;
    match resp.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
        Some(workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "response without an ack",
        )),
    }
}
