//! Authorization at the destination: every inbound connection is checked against the pod's policies before the
//! app is dialed, and stays registered while open so a policy change that denies it closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mesh_core::workload::authz::{ConnInfo, Verdict};
use mesh_core::workload::state::StateStore;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DenyLabels, Metrics, Transport};

struct Tracked {
    info: ConnInfo,
    transport: Transport,
    stop: CancellationToken,
}

/// Open inbound connections, by id.
#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Tracked>>,
}

/// Unregisters the connection when dropped; `stop` is cancelled if a new policy denies it.
pub struct Registered<'a> {
    conns: &'a Connections,
    id: u64,
    pub stop: CancellationToken,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

/// Checks a new connection; a denial is logged and counted with the deciding policy.
/// A destination ztunnel's state does not know (deleted, or not yet pushed) is refused: no policy can be checked
/// for it, and admitting it would let every policy fail open.
pub fn admit(state: &StateStore, metrics: &Metrics, info: &ConnInfo, transport: Transport) -> bool {
    let snap = state.load();
    let Some(dst) = snap.workload(&info.dst_ip) else {
        tracing::info!(dst = %info.dst_ip, src = %info.src_ip, "destination is not a known workload; refused");
        metrics
            .denied
            .get_or_create(&DenyLabels {
                policy: "-".into(),
                reason: "unknown_destination",
                transport,
                established: false,
            })
            .inc();
        return false;
    };
    match state.policies().check(dst, info) {
        Verdict::Allow => true,
        Verdict::Deny { policy, reason } => {
            tracing::info!(%policy, reason = reason.as_str(), src = %info.src_ip, principal = ?info.principal.as_ref().map(ToString::to_string), port = info.dst_port, "connection denied by policy");
            metrics
                .denied
                .get_or_create(&DenyLabels {
                    policy,
                    reason: reason.as_str(),
                    transport,
                    established: false,
                })
                .inc();
            false
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.open.lock().expect("connections lock")
    }

    pub fn register(&self, info: ConnInfo, transport: Transport) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        self.lock().insert(
            id,
            Tracked {
                info,
                transport,
                stop: stop.clone(),
            },
        );
        Registered {
            conns: self,
            id,
            stop,
        }
    }

    /// Re-checks every open connection against the current state and policy; closes the ones now denied.
    pub fn revalidate(&self, state: &StateStore, metrics: &Metrics) -> usize {
        let snap = state.load();
        let policies = state.policies();
        let mut closed = 0;
        for t in self.lock().values() {
            // A destination missing from the state keeps its established connections: a state that briefly
            // lacks a workload (a control plane restarting) must not reset them; new ones are refused (`admit`).
            let Some(dst) = snap.workload(&t.info.dst_ip) else {
                continue;
            };
            if let Verdict::Deny { policy, reason } = policies.check(dst, &t.info) {
                if !t.stop.is_cancelled() {
                    tracing::info!(%policy, reason = reason.as_str(), src = %t.info.src_ip, port = t.info.dst_port, "established connection closed by policy change");
                    metrics
                        .denied
                        .get_or_create(&DenyLabels {
                            policy,
                            reason: reason.as_str(),
                            transport: t.transport,
                            established: true,
                        })
                        .inc();
                    t.stop.cancel();
                    closed += 1;
                }
            }
        }
        closed
    }
}
