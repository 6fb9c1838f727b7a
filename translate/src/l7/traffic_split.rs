//! SMI TrafficSplit → one route without a match that splits the root Service's traffic over the backends.

use mesh_proto::mesh::l7::v1 as pb;

use super::{default_retry, destination_key, object_name};
use mesh_model::TrafficSplit;

pub(super) fn routes(ts: &TrafficSplit) -> Vec<pb::HttpRoute> {
    let ns = &ts.metadata.namespace;
    let destinations = ts
        .spec
        .backends
        .iter()
        .map(|b| pb::WeightedDestination {
            destination: Some(pb::Destination {
                service: destination_key(&b.service, ns),
                ..Default::default()
            }),
            // The model holds v1alpha1 quantities in milli-units ("900m" → 900, "1" → 1000), so weights within a
            // split keep their proportion; validation has rejected negative ones.
            weight: u32::try_from(b.weight.max(0)).unwrap_or(u32::MAX),
            ..Default::default()
        })
        .collect();
    vec![pb::HttpRoute {
        name: object_name("TrafficSplit", &ts.metadata),
        destinations,
        // SMI has no retry setting; every route the control plane emits carries Istio's default.
        retry: Some(default_retry()),
        ..Default::default()
    }]
}
