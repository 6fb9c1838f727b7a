//! Prometheus registries: one per component, labels as typed sets, text exposition for the metrics port.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::tls::{IdentityRejected, IdentityRejection};

/// Renders a registry in the Prometheus text format (OpenMetrics, as prometheus-client writes it).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
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

/// Metrics of the HBONE layer, shared by every process that speaks it.
#[derive(Clone, Default)]
pub struct HboneMetrics {
    pub handshake_failures: Family<HandshakeLabels, Counter>,
}

impl HboneMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "mesh_tls_handshake_failures",
            "mTLS handshakes that failed, by direction and reason",
            m.handshake_failures.clone(),
        );
        m
    }

    pub fn handshake_failed(&self, direction: Direction, err: &std::io::Error) -> HandshakeFailure {
        let reason = HandshakeFailure::classify(err);
        self.handshake_failures
            .get_or_create(&HandshakeLabels { direction, reason })
            .inc();
        reason
    }
}
