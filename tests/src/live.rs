//! The local run's live view: steady demo traffic to the seed's canary route, and a small table computed each
//! second from the proxies' own metrics (the waypoint's `istio_requests_total` and latency histogram, the
//! ztunnels' `istio_tcp_connections_opened_total`), as a person would read them from Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::http::{request, Req};
use crate::Cluster;

use mesh_core::metrics::{histogram_quantile, parse_sample};

/// What the table is computed from: counters as they stand at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Requests through the waypoint to order-service, by destination version.
    pub by_version: BTreeMap<String, f64>,
    /// Of those, the ones answered with a 5xx or a local failure.
    pub errors: f64,
    /// The latency histogram's cumulative buckets (`le` in ms → count), all versions together.
    pub buckets: BTreeMap<u64, f64>,
    /// Connections between workloads, as the destination's ztunnel reports them: (source, destination, policy).
    pub edges: BTreeSet<(String, String, String)>,
}

impl Sample {
    pub fn take(c: &Cluster) -> Result<Self> {
        let mut s = Sample::default();
        for line in c.waypoint_metrics("waypoint")?.lines() {
            let Some((name, labels, value)) = parse_sample(line) else {
                continue;
            };
            if labels.get("destination_service_name") != Some(&"order-service") {
                continue;
            }
            match name {
                "istio_requests_total" => {
                    let version = labels.get("destination_version").copied().unwrap_or("-");
                    *s.by_version.entry(version.to_string()).or_default() += value;
                    if labels
                        .get("response_code")
                        .is_some_and(|c| c.starts_with('5'))
                    {
                        s.errors += value;
                    }
                }
                "istio_request_duration_milliseconds_bucket" => {
                    let le = labels.get("le").copied().unwrap_or("+Inf");
                    let le = le.parse::<f64>().map_or(u64::MAX, |v| v as u64);
                    *s.buckets.entry(le).or_default() += value;
                }
                _ => {}
            }
        }
        for node in 0..c.nodes.len() {
            for line in c.metrics(node)?.lines() {
                let Some((name, labels, _)) = parse_sample(line) else {
                    continue;
                };
                if name == "istio_tcp_connections_opened_total"
                    && labels.get("reporter") == Some(&"destination")
                {
                    let l = |k: &str| labels.get(k).copied().unwrap_or("-").to_string();
                    s.edges.insert((
                        l("source_workload"),
                        l("destination_workload"),
                        l("connection_security_policy"),
                    ));
                }
            }
        }
        Ok(s)
    }
}

/// The table for the interval between two samples `secs` apart.
pub fn render(before: &Sample, now: &Sample, secs: f64) -> Vec<String> {
    let rate = |v: &str| {
        (now.by_version.get(v).copied().unwrap_or(0.0)
            - before.by_version.get(v).copied().unwrap_or(0.0))
            / secs
    };
    let total: f64 = now.by_version.keys().map(|v| rate(v)).sum();
    let mut lines = vec![
        "order-service through the waypoint (seed VirtualService: 90/10, x-canary to v2):"
            .to_string(),
    ];
    for v in now.by_version.keys() {
        let share = if total > 0.0 {
            rate(v) / total * 100.0
        } else {
            0.0
        };
        lines.push(format!("  {v:<4} {:>7.1} req/s  {share:>5.1}%", rate(v)));
    }
    let ms = |q| {
        histogram_quantile(&before.buckets, &now.buckets, q)
            .map_or("-".to_string(), |v| format!("{v:.1} ms"))
    };
    lines.push(format!(
        "  p50 {}  p99 {}  errors {:.1}/s",
        ms(0.5),
        ms(0.99),
        (now.errors - before.errors) / secs
    ));
    lines.push("connections seen by the destination's ztunnel:".to_string());
    for (src, dst, policy) in &now.edges {
        lines.push(format!("  {src:>8} -> {dst:<9} {policy}"));
    }
    lines
}

/// Demo traffic from `sleep` to order-service until `stop`: about 50 requests a second, one in ten `x-canary`.
pub fn traffic(c: &Cluster, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    let sleep = c.pod("sleep").netns.clone();
    let vip: SocketAddr = crate::seed::ORDER_VIP.parse()?;
    Ok(std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let req = if n % 10 == 9 {
                Req::get("/").header("x-canary", "true")
            } else {
                Req::get("/")
            };
            let _ = request(&sleep, vip, req);
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_quantiles() {
        let (name, labels, v) = parse_sample(
            "istio_requests_total{reporter=\"waypoint\",destination_version=\"v1\"} 42",
        )
        .unwrap();
        assert_eq!(
            (name, labels["destination_version"], v),
            ("istio_requests_total", "v1", 42.0)
        );
        assert!(parse_sample("# TYPE x counter").is_none());
        let before = BTreeMap::from([(1, 0.0), (5, 0.0), (u64::MAX, 0.0)]);
        let now = BTreeMap::from([(1, 50.0), (5, 100.0), (u64::MAX, 100.0)]);
        assert_eq!(histogram_quantile(&before, &now, 0.5), Some(1.0));
        assert_eq!(histogram_quantile(&before, &now, 0.75), Some(3.0));
        assert_eq!(
            histogram_quantile(&now, &now, 0.5),
            None,
            "no requests in between"
        );
    }
}
