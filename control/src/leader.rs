//! Leader election over a `coordination.k8s.io` Lease, as Kubernetes' own controllers do: every replica serves
//! xDS and the CA, but only the Lease holder writes to the API server (the waypoint deployer), so two replicas
//! never fight over the same objects.
//!
//! The holder renews the Lease every `renew_every`; another replica takes it over only once it has not been
//! renewed for `lease_duration`, or at once when the holder gives it up on a graceful stop. Every write carries
//! the Lease's `resourceVersion`, so of two replicas racing for it exactly one succeeds (409 for the other).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::sync::watch;

/// The Lease the control plane's writers hold.
pub const LEASE: &str = "mesh-control-writer";

#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    /// This replica's name in `holderIdentity` (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl Election {
    /// Takes part until `stop` resolves, publishing whether this replica leads; gives the Lease up when stopped.
    pub async fn run(
        self,
        client: Client,
        leading: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        tokio::pin!(stop);
        loop {
            let now_leading = match self.try_lead(&api).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, lease = LEASE, "leader election: API error; not leading until it succeeds");
                    false
                }
            };
            leading.send_if_modified(|was| {
                if *was != now_leading {
                    tracing::info!(identity = %self.identity, leading = now_leading, "leadership changed");
                    *was = now_leading;
                    return true;
                }
                false
            });
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.renew_every) => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(e) = self.release(&api).await {
                tracing::warn!(error = %e, "could not give up the Lease; another replica takes it when it expires");
            }
        }
    }

    /// One round: create, renew or take over the Lease; true when this replica holds it afterwards.
    async fn try_lead(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = api.get_opt(LEASE).await? else {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return conflict_is_false(api.create(&PostParams::default(), &fresh).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = if holder == self.identity {
            self.spec(spec.acquire_time.map_or(now, |t| t.0), now, transitions)
        } else if holder.is_empty() || expired(&spec, now) {
            tracing::info!(previous = holder, "taking over the Lease");
            self.spec(now, now, transitions + 1)
        } else {
            return Ok(false);
        };
        lease.spec = Some(next);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        conflict_is_false(api.replace(LEASE, &PostParams::default(), &lease).await)
    }

    async fn release(&self, api: &Api<Lease>) -> Result<(), kube::Error> {
        let Some(mut lease) = api.get_opt(LEASE).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        api.replace(LEASE, &PostParams::default(), &lease).await?;
        tracing::info!(identity = %self.identity, "Lease given up");
        Ok(())
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// Not renewed within its duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(15)) * 1000;
    now.as_millisecond() - renewed.0.as_millisecond() > duration_ms
}

fn conflict_is_false(r: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
