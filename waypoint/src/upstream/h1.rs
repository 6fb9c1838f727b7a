//! Pooled HTTP/1.1 connections of one cluster, each carried by its own HBONE stream (or plain TCP to a workload
//! outside the mesh): capped by `maxConnections`, with a bounded queue of pending requests
//! (`http1MaxPendingRequests`); a request that finds both full fails at once (503 UO).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use super::{Body, Io};
use crate::budget::admit;
use crate::routes::Limits;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("circuit breaker open: connections and pending requests at their limits")]
    Overflow,
    #[error("no upstream connection became free within {0:?}")]
    Timeout(Duration),
}

struct Idle {
    send: http1::SendRequest<Body>,
    since: Instant,
    used: usize,
}

#[derive(Default)]
struct Inner {
    idle: HashMap<IpAddr, Vec<Idle>>,
    /// HTTP/1 connections open or being opened (idle ones included).
    total: usize,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
    pending: AtomicUsize,
}

#[derive(Clone, Default)]
pub struct H1Pool(Arc<Shared>);

/// An HTTP/1 connection checked out for one request.
pub struct H1Conn {
    pub send: http1::SendRequest<Body>,
    pub used: usize,
}

/// Leave to open one more connection; gives the slot back if the dial fails.
pub struct DialSlot(Option<H1Pool>);

impl Drop for DialSlot {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.closed();
        }
    }
}

pub enum Checkout {
    Ready(H1Conn),
    Dial(DialSlot),
}

impl H1Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.inner.lock().expect("upstream pool lock")
    }

    fn closed(&self) {
        self.lock().total -= 1;
        self.0.notify.notify_waiters();
    }

    pub fn connections(&self) -> usize {
        self.lock().total
    }

    /// Requests waiting for a connection.
    pub fn pending(&self) -> usize {
        self.0.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// An idle connection to `host`, or leave to dial one; waits (as a pending request) when the cluster is at
    /// `maxConnections`, and overflows when the pending queue is full too.
    pub async fn checkout(&self, host: IpAddr, limits: &Limits) -> Result<Checkout, PoolError> {
        let wait = limits.connect_timeout.unwrap_or(Duration::from_secs(10));
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or(now + Duration::from_secs(3600));
        let mut pending = None;
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.try_checkout(host, limits) {
                return Ok(c);
            }
            if pending.is_none() {
                pending =
                    Some(admit(&self.0.pending, limits.max_pending).ok_or(PoolError::Overflow)?);
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .map_err(|_| PoolError::Timeout(wait))?;
        }
    }

    fn try_checkout(&self, host: IpAddr, limits: &Limits) -> Option<Checkout> {
        let mut inner = self.lock();
        let idle_timeout = limits.idle_timeout.unwrap_or(Duration::from_secs(3600));
        if let Some(list) = inner.idle.get_mut(&host) {
            while let Some(c) = list.pop() {
                // A closed or stale connection is dropped here; its task gives its slot back.
                if !c.send.is_closed() && c.since.elapsed() < idle_timeout {
                    return Some(Checkout::Ready(H1Conn {
                        send: c.send,
                        used: c.used,
                    }));
                }
            }
        }
        if inner.total < limits.max_connections.unwrap_or(usize::MAX) {
            inner.total += 1;
            return Some(Checkout::Dial(DialSlot(Some(self.clone()))));
        }
        // At the cap with idle connections to other hosts: close one so this host can have the slot.
        if let Some(victim) = inner.idle.values_mut().find_map(Vec::pop) {
            drop(victim);
        }
        None
    }

    /// Speaks HTTP/1.1 on `io` using the slot from [`H1Pool::checkout`].
    pub async fn handshake(&self, slot: DialSlot, io: Box<dyn Io>) -> Result<H1Conn, hyper::Error> {
        let (send, conn) = http1::handshake(TokioIo::new(io)).await?;
        let mut slot = slot;
        let owner = slot.0.take();
        tokio::spawn(async move {
            // With upgrades, a 101 hands the connection to the upgraded stream (it leaves the pool then).
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
            if let Some(p) = owner {
                p.closed();
            }
        });
        Ok(H1Conn { send, used: 0 })
    }

    /// Returns a connection once its response is complete, unless it served `maxRequestsPerConnection`.
    pub fn release(&self, host: IpAddr, mut conn: H1Conn, limits: &Limits) {
        conn.used += 1;
        if limits
            .max_requests_per_connection
            .is_some_and(|max| conn.used >= max)
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if conn.send.ready().await.is_ok() {
                this.lock().idle.entry(host).or_default().push(Idle {
                    send: conn.send,
                    since: Instant::now(),
                    used: conn.used,
                });
                this.0.notify.notify_waiters();
            }
        });
    }
}
