//! Prometheus registries: one per component, labels as typed sets, text exposition for the metrics port.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::tls::{IdentityRejected, IdentityRejection};

/// Renders a registry in the Prometheus text format (OpenMetrics, as prometheus-client writes it).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    process_metrics(&mut out);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// Istio's `istio_build{component, tag}`, value 1: which component and version a scrape target is, so a
/// dashboard can select one component's `process_*` metrics (`* on (instance) group_left () istio_build{...}`).
/// Components as Istio names them: `ztunnel`, `proxy` (the waypoint), `pilot` (the control plane).
pub fn register_build(registry: &mut Registry, component: &'static str) {
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Build {
        component: &'static str,
        tag: &'static str,
    }
    let build = Family::<Build, prometheus_client::metrics::gauge::Gauge>::default();
    build
        .get_or_create(&Build {
            component,
            tag: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register(
        "istio_build",
        "The component and version of this process",
        build,
    );
}

/// One sample line of the Prometheus text format (what `/metrics` writes): the name, the labels and the value;
/// `None` for comments and lines that are not samples. Label values are the mesh's own (no escaped quotes).
pub fn parse_sample(line: &str) -> Option<(&str, std::collections::HashMap<&str, &str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, labels)) = head.split_once('{') else {
        return Some((head, Default::default(), value));
    };
    let labels = labels
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|p| p.split_once("=\""))
        .map(|(k, v)| (k.trim_start_matches(','), v.trim_end_matches('"')))
        .collect();
    Some((name, labels, value))
}

/// The value under which a share `q` of the observations between two readings of a histogram fell (cumulative
/// buckets `le` → count, `u64::MAX` for `+Inf`), interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does; `None` when nothing was observed in between.
pub fn histogram_quantile(
    before: &std::collections::BTreeMap<u64, f64>,
    now: &std::collections::BTreeMap<u64, f64>,
    q: f64,
) -> Option<f64> {
    let delta: Vec<(u64, f64)> = now
        .iter()
        .map(|(le, n)| (*le, n - before.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0u64, 0.0);
    for (le, n) in delta {
        if n >= rank {
            if le == u64::MAX {
                return Some(prev.0 as f64);
            }
            let within = if n > prev.1 {
                (rank - prev.1) / (n - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 as f64 + (le - prev.0) as f64 * within);
        }
        prev = (le, n);
    }
    None
}

/// The standard `process_*` metrics of the Prometheus client libraries (what Istio's processes export too), read
/// from `/proc/self` at each scrape.
fn process_metrics(out: &mut String) {
    use std::fmt::Write;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096.0, |p| p as f64);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
    });
    // /proc/self/stat fields, counted from the state (field 3 of proc(5)) as 0: utime 11, stime 12,
    // starttime 19, rss 21.
    let mut gauge = |name: &str, help: &str, kind: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
            let sample = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let _ = writeln!(out, "{sample} {v}");
        }
    };
    let cpu = field(11).zip(field(12)).map(|(u, s)| (u + s) / ticks);
    gauge(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        "counter",
        cpu,
    );
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        "gauge",
        field(21).map(|p| p * page),
    );
    let start = field(19).zip(boot).map(|(t, b)| b + t / ticks);
    gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        "gauge",
        start,
    );
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as f64)
        .ok();
    gauge(
        "process_open_fds",
        "Number of open file descriptors",
        "gauge",
        open,
    );
    let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft as f64);
    gauge(
        "process_max_fds",
        "Maximum number of open file descriptors",
        "gauge",
        max,
    );
}

/// A counter under its exact name, without OpenMetrics' `_total`: istiod's `pilot_xds_pushes` and
/// `citadel_server_*_count` are spelt that way, and dashboards written for Istio query those names. Exposed as
/// type `unknown`, which Prometheus scrapes and `rate()` reads like any counter.
#[derive(Clone, Debug, Default)]
pub struct BareCounter(Counter);

impl BareCounter {
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl prometheus_client::metrics::TypedMetric for BareCounter {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Unknown;
}

impl prometheus_client::encoding::EncodeMetric for BareCounter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.get() as i64))
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Unknown
    }
}

/// Label values are written as Prometheus users expect them (lower case), hence the variant names.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    inbound,
    outbound,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeFailure {
    foreign_trust_domain,
    identity_mismatch,
    untrusted_issuer,
    peer_rejected,
    expired,
    no_client_certificate,
    not_tls,
    eof,
    timeout,
    other,
}

impl HandshakeFailure {
    /// From the error a TLS handshake returned: rustls' own error, carried inside the `io::Error`.
    pub fn classify(err: &std::io::Error) -> Self {
        use rustls::{CertificateError as C, Error as E};
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
            return match err.kind() {
                std::io::ErrorKind::UnexpectedEof => Self::eof,
                std::io::ErrorKind::TimedOut => Self::timeout,
                _ => Self::other,
            };
        };
        match tls {
            // Not signed by a mesh root: an unknown issuer, or one posing under a root's name.
            E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => Self::untrusted_issuer,
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => Self::expired,
            E::InvalidCertificate(C::Other(o)) => {
                match o.0.downcast_ref::<IdentityRejected>().map(|r| r.kind) {
                    Some(IdentityRejection::ForeignTrustDomain) => Self::foreign_trust_domain,
                    Some(_) => Self::identity_mismatch,
                    None => Self::other,
                }
            }
            E::NoCertificatesPresented => Self::no_client_certificate,
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => Self::not_tls,
            E::AlertReceived(_) => Self::peer_rejected,
            _ => Self::other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: Direction,
    pub reason: HandshakeFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// Metrics of the HBONE layer, shared by every process that speaks it.
#[derive(Clone, Default)]
pub struct HboneMetrics {
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    pub connections_opened: Family<DirectionLabels, Counter>,
}

impl HboneMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "mesh_tls_handshake_failures",
            "mTLS handshakes that failed, by direction and reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "mesh_hbone_connections_opened",
            "HBONE connections (mTLS handshakes completed), by direction",
            m.connections_opened.clone(),
        );
        m
    }

    pub fn connection_opened(&self, direction: Direction) {
        self.connections_opened
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    pub fn handshake_failed(&self, direction: Direction, err: &std::io::Error) -> HandshakeFailure {
        let reason = HandshakeFailure::classify(err);
        self.handshake_failures
            .get_or_create(&HandshakeLabels { direction, reason })
            .inc();
        reason
    }
}

/// Who reports a metric, as Istio's `reporter` label says it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
    waypoint,
}

/// Istio's `connection_security_policy`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    mutual_tls,
    none,
}

/// Envoy's response flags, as Istio reports them (`-` for none). ztunnel uses the L4 ones.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    None,
    /// Upstream overflow: a circuit breaker was open.
    UO,
    /// No healthy upstream host.
    UH,
    /// Upstream connection failure.
    UF,
    /// Upstream request timeout.
    UT,
    /// Retry limit exceeded.
    URX,
    /// Upstream connection terminated (reset).
    UC,
    /// No route for the request.
    NR,
    /// Fault injection: aborted.
    FI,
    /// Fault injection: delayed.
    DI,
    /// Downstream connection termination.
    DC,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::UO => "UO",
            Self::UH => "UH",
            Self::UF => "UF",
            Self::UT => "UT",
            Self::URX => "URX",
            Self::UC => "UC",
            Self::NR => "NR",
            Self::FI => "FI",
            Self::DI => "DI",
            Self::DC => "DC",
        }
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(self.as_str())
    }
}

/// The labels of Istio's `istio_tcp_*` metrics, for ztunnel's connections and the waypoint's opaque TCP alike.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub request_protocol: &'static str,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Istio's L4 metrics: `istio_tcp_connections_opened/closed_total`, `istio_tcp_sent/received_bytes_total`.
#[derive(Clone, Default)]
pub struct TcpMetrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    /// Registers under `istio_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the client (response direction)",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the client (request direction)",
            m.received_bytes.clone(),
        );
        m
    }

    /// Counts a finished connection (`received` flowed client to server, `sent` server to client) and writes its
    /// access log line (target `access`, inside the connection's span, which names the pod and the addresses;
    /// `RUST_LOG=info,access=off` turns it off).
    pub fn record(&self, labels: &TcpLabels, received: u64, sent: u64, opened: std::time::Instant) {
        self.closed.get_or_create(labels).inc();
        self.received_bytes.get_or_create(labels).inc_by(received);
        self.sent_bytes.get_or_create(labels).inc_by(sent);
        tracing::info!(
            target: "access",
            reporter = ?labels.reporter,
            src_workload = %format_args!("{}/{}", labels.source_workload_namespace, labels.source_workload),
            src_identity = %labels.source_principal,
            dst_workload = %format_args!("{}/{}", labels.destination_workload_namespace, labels.destination_workload),
            dst_identity = %labels.destination_principal,
            dst_service = %labels.destination_service,
            security = ?labels.connection_security_policy,
            flags = labels.response_flags.as_str(),
            bytes_received = received,
            bytes_sent = sent,
            duration_ms = opened.elapsed().as_millis() as u64,
            "connection"
        );
    }
}
