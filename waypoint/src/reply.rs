//! Every response the waypoint makes itself, as Envoy makes them (its "local replies"): why, and the status,
//! body and response flag that reason gets. The one place a failure turns into what the client and the
//! `response_flags` metric label see.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::metrics::ResponseFlags;
use mesh_core::workload::state::Workload;

use crate::upstream::Body;

/// What came back, and how to report it.
pub struct Forwarded {
    pub resp: Response<Body>,
    pub flags: ResponseFlags,
    pub upstream: Option<Arc<Workload>>,
    /// Retries made before this answer (its trace span reports them).
    pub retries: u32,
}

/// Why the waypoint answered instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum LocalReply {
    #[error("no route")]
    NoRoute,
    #[error("RBAC: access denied")]
    Denied,
    #[error("fault filter abort")]
    FaultAbort(StatusCode),
    #[error("request body incomplete")]
    BodyIncomplete,
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("no such port on the destination service")]
    NoSuchPort,
    /// A streamed body cannot be sent twice.
    #[error("request body already sent")]
    BodyAlreadySent,
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    #[error("upstream request timeout")]
    Timeout,
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection failure, {0}")]
    ConnectFailure(String),
    #[error("upstream connect error or disconnect/reset before headers. reset reason: {0}")]
    Reset(String),
    #[error("request cannot be forwarded: {0}")]
    Invalid(String),
}

impl LocalReply {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::FaultAbort(status) => *status,
            Self::BodyIncomplete | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoHealthyUpstream
            | Self::NoSuchPort
            | Self::BodyAlreadySent
            | Self::Overflow
            | Self::ConnectFailure(_)
            | Self::Reset(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn flags(&self) -> ResponseFlags {
        match self {
            Self::NoRoute => ResponseFlags::NR,
            Self::FaultAbort(_) => ResponseFlags::FI,
            Self::BodyIncomplete => ResponseFlags::DC,
            Self::NoHealthyUpstream | Self::NoSuchPort => ResponseFlags::UH,
            Self::BodyAlreadySent => ResponseFlags::URX,
            Self::Overflow => ResponseFlags::UO,
            Self::Timeout => ResponseFlags::UT,
            Self::ConnectFailure(_) => ResponseFlags::UF,
            Self::Reset(_) => ResponseFlags::UC,
            // Envoy reports an RBAC denial and a malformed request without an upstream flag.
            Self::Denied | Self::Invalid(_) => ResponseFlags::None,
        }
    }
}

impl From<LocalReply> for Forwarded {
    fn from(r: LocalReply) -> Self {
        Forwarded {
            resp: response(r.status(), "text/plain", Bytes::from(r.to_string())),
            flags: r.flags(),
            upstream: None,
            retries: 0,
        }
    }
}

/// A response with `body` (and a content type only when given one).
pub fn response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut b = Response::builder().status(status);
    if !content_type.is_empty() {
        b = b.header(http::header::CONTENT_TYPE, content_type);
    }
    b.body(full(body))
        .expect("a status and a valid content type make a valid response")
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_envoys_status_and_flag() {
        let cases = [
            (LocalReply::NoRoute, 404, "NR"),
            (LocalReply::Denied, 403, "-"),
            (LocalReply::FaultAbort(StatusCode::IM_A_TEAPOT), 418, "FI"),
            (LocalReply::BodyIncomplete, 400, "DC"),
            (LocalReply::NoHealthyUpstream, 503, "UH"),
            (LocalReply::Overflow, 503, "UO"),
            (LocalReply::Timeout, 504, "UT"),
            (LocalReply::ConnectFailure("refused".into()), 503, "UF"),
            (LocalReply::Reset("reset".into()), 503, "UC"),
            (LocalReply::Invalid("bad uri".into()), 400, "-"),
        ];
        for (reply, status, flag) in cases {
            let text = reply.to_string();
            let f = Forwarded::from(reply);
            assert_eq!(f.resp.status().as_u16(), status, "{text}");
            assert_eq!(f.flags.as_str(), flag, "{text}");
        }
        assert!(LocalReply::Overflow
            .to_string()
            .ends_with("reset reason: overflow"));
    }
}
