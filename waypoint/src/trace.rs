//! Distributed tracing at the waypoint: the trace context of a request (W3C `traceparent`, else B3's `x-b3-*` or
//! single `b3` header) is continued, or started when absent; the waypoint's span (route, cluster, upstream host,
//! retries, response flags) becomes the parent the upstream sees; spans are exported over OTLP/gRPC in batches.
//!
//! Without `tracing.address` nothing here runs: no span is built and the headers pass through unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tokio::sync::mpsc;

/// Where spans go, and which share of new traces is sampled.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector, `http://host:4317` (env `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub address: String,
    /// Percent of traces this waypoint starts that are sampled (Istio's `sampling`, default 1). A request that
    /// arrives with a context keeps its sampling decision.
    #[serde(default = "default_sampling")]
    pub sampling_percentage: f64,
}

pub fn default_sampling() -> f64 {
    1.0
}

/// A request's place in its trace: the trace, the caller's span (if any) and the waypoint's own span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub parent: Option<[u8; 8]>,
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// The caller spoke B3: answer upstream in B3 too (as well as W3C).
    b3: bool,
}

/// `N` bytes from lowercase hex (the W3C and B3 forms); all zero is invalid.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    (out != [0u8; N]).then_some(out)
}

/// A B3 trace id may be 64-bit; it is the low half of the 128-bit id.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex_bytes(s),
        16 => hex_bytes::<8>(s).map(|low| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }),
        _ => None,
    }
}

impl Context {
    /// The incoming context, continued with a new span of the waypoint's; a new trace when there is none (or it
    /// is malformed), sampled at `sampling_percentage`.
    pub fn continue_or_start(headers: &HeaderMap, sampling_percentage: f64) -> Self {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let span_id = rand::random::<[u8; 8]>();
        // B3 leaves sampling to the receiver when it does not say ("defer"): then our own rate decides.
        let ours = || rand::random::<f64>() * 100.0 < sampling_percentage;
        let incoming = get("traceparent")
            .and_then(parse_traceparent)
            .map(|(trace, parent, sampled)| (trace, parent, sampled, false))
            .or_else(|| {
                let trace = b3_trace_id(get("x-b3-traceid")?)?;
                let parent = hex_bytes(get("x-b3-spanid")?)?;
                let sampled = match (get("x-b3-sampled"), get("x-b3-flags")) {
                    (_, Some("1")) | (Some("1" | "true"), _) => true,
                    (Some(_), _) => false,
                    (None, _) => ours(),
                };
                Some((trace, parent, sampled, true))
            })
            .or_else(|| {
                // Single header: {trace}-{span}[-{sampled}[-{parent}]] (a lone `0` denies sampling).
                let mut parts = get("b3")?.split('-');
                let trace = b3_trace_id(parts.next()?)?;
                let parent = hex_bytes(parts.next()?)?;
                let sampled = match parts.next() {
                    Some("1" | "d") => true,
                    Some(_) => false,
                    None => ours(),
                };
                Some((trace, parent, sampled, true))
            });
        match incoming {
            Some((trace_id, parent, sampled, b3)) => Self {
                trace_id,
                parent: Some(parent),
                span_id,
                sampled,
                b3,
            },
            None => Self {
                trace_id: rand::random(),
                parent: None,
                span_id,
                // `b3: 0` asks for no sampling without naming a trace.
                sampled: get("b3") != Some("0") && ours(),
                b3: false,
            },
        }
    }

    /// The context the upstream sees: this trace, with the waypoint's span as its parent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let trace = hex::encode(self.trace_id);
        let span = hex::encode(self.span_id);
        let flags = if self.sampled { "01" } else { "00" };
        if self.b3 {
            headers.remove("b3");
        }
        if self.parent.is_none() {
            // A new trace: the caller's vendor state belonged to another one.
            headers.remove("tracestate");
        }
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        set("traceparent", format!("00-{trace}-{span}-{flags}"));
        if self.b3 {
            set("x-b3-traceid", trace);
            set("x-b3-spanid", span);
            if let Some(p) = self.parent {
                set("x-b3-parentspanid", hex::encode(p));
            }
            set("x-b3-sampled", if self.sampled { "1" } else { "0" }.into());
        }
    }
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (55 characters): trace id, parent span id, sampled flag. A later version is
/// read the same way when its first four fields have this shape and anything after them starts with `-`, as the
/// W3C spec asks. Anything else starts a new trace.
fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let v = v.trim();
    let head = v.get(..55)?;
    let rest = &v[55..];
    let mut parts = head.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let shaped = parts.next().is_none()
        && version.len() == 2
        && flags.len() == 2
        && lower_hex(version)
        && lower_hex(flags)
        && version != "ff";
    let tail_ok = if version == "00" {
        rest.is_empty()
    } else {
        rest.is_empty() || rest.starts_with('-')
    };
    if !shaped || !tail_ok {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((hex_bytes(trace)?, hex_bytes(parent)?, flags & 1 == 1))
}

/// What the waypoint records of one request.
pub struct Finished {
    pub context: Context,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub status_code: u16,
}

/// Spans to the exporter: bounded, and dropped rather than waited for when the collector is slow.
#[derive(Clone)]
pub struct Tracer {
    tx: mpsc::Sender<Finished>,
    pub sampling_percentage: f64,
}

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

impl Tracer {
    /// Starts the exporter task; `service` names this waypoint in the spans' resource.
    pub fn start(cfg: &TracingConfig, service: String) -> Result<Self, tonic::transport::Error> {
        // A collector that accepts but never answers must not stall the exporter: every export has a deadline.
        let channel = tonic::transport::Endpoint::from_shared(cfg.address.clone())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export(TraceServiceClient::new(channel), rx, service));
        Ok(Self {
            tx,
            sampling_percentage: cfg.sampling_percentage,
        })
    }

    pub fn record(&self, span: Finished) {
        if span.context.sampled && self.tx.try_send(span).is_err() {
            tracing::debug!("trace queue full; span dropped");
        }
    }
}

async fn export(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<Finished>,
    service: String,
) {
    let resource = Resource {
        attributes: vec![attr("service.name", service)],
        ..Default::default()
    };
    let mut batch = Vec::new();
    loop {
        // The first span of a batch waits as long as it must; the rest only until the flush deadline.
        match rx.recv().await {
            Some(s) => batch.push(otlp(s)),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(otlp(s)),
                Ok(None) | Err(_) => break,
            }
        }
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "waypoint".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: std::mem::take(&mut batch),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        if let Err(e) = client.export(request).await {
            tracing::warn!(error = %e, "exporting spans failed; this batch is dropped");
        }
    }
}

fn attr(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn otlp(s: Finished) -> Span {
    let mut attributes: Vec<KeyValue> = s.attributes.into_iter().map(|(k, v)| attr(k, v)).collect();
    attributes.push(attr("http.status_code", s.status_code.to_string()));
    let code = if s.status_code >= 500 {
        status::StatusCode::Error
    } else {
        status::StatusCode::Unset
    };
    Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s.context.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes,
        status: Some(Status {
            code: code as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn continues_w3c_and_b3_and_starts_when_absent_or_malformed() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = Context::continue_or_start(&headers(&[("traceparent", tp)]), 0.0);
        assert_eq!(hex::encode(c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(c.sampled);
        let mut up = HeaderMap::new();
        c.inject(&mut up);
        let sent = up["traceparent"].to_str().unwrap().to_string();
        assert_eq!(
            sent,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                hex::encode(c.span_id)
            )
        );
        assert!(up.get("x-b3-traceid").is_none());

        let unsampled = tp.replace("-01", "-00");
        assert!(
            !Context::continue_or_start(&headers(&[("traceparent", &unsampled)]), 100.0).sampled
        );

        let b3 = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]);
        let c = Context::continue_or_start(&b3, 0.0);
        assert_eq!(hex::encode(c.trace_id), "0000000000000000a3ce929d0e0e4736");
        let mut up = HeaderMap::new();
        c.inject(&mut up);
        assert_eq!(up["x-b3-parentspanid"], "00f067aa0ba902b7");
        assert_eq!(up["x-b3-spanid"], hex::encode(c.span_id).as_str());
        let single = headers(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")]);
        assert_eq!(Context::continue_or_start(&single, 0.0).parent, c.parent);

        for bad in [
            "garbage",
            "00-0000-1111-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let c = Context::continue_or_start(&headers(&[("traceparent", bad)]), 100.0);
            assert!(c.parent.is_none() && c.sampled, "{bad}: a new trace");
        }
        assert!(!Context::continue_or_start(&HeaderMap::new(), 0.0).sampled);
        // A later version may add fields after the flags.
        let v1 = format!("01-{}-later-fields", &tp[3..]);
        assert!(
            Context::continue_or_start(&headers(&[("traceparent", &v1)]), 0.0)
                .parent
                .is_some()
        );
        // B3 without a sampling decision defers to ours; `b3: 0` denies it.
        let deferred = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]);
        assert!(!Context::continue_or_start(&deferred, 0.0).sampled);
        assert!(Context::continue_or_start(&deferred, 100.0).sampled);
        assert!(!Context::continue_or_start(&headers(&[("b3", "0")]), 100.0).sampled);
    }
}
