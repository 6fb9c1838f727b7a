# syntax=docker/dockerfile:1
# The mesh's images, one target per component, named as the charts expect (<repository>/<component>:<version>):
#   docker build --target control  -t ghcr.io/mesh/control:0.1.0 .
#   docker build --target ztunnel  -t ghcr.io/mesh/ztunnel:0.1.0 .
#   docker build --target waypoint -t ghcr.io/mesh/waypoint:0.1.0 .
#   docker build --target cni      -t ghcr.io/mesh/cni:0.1.0 .
# scripts/build-image.sh makes the same four images without Docker or a registry (umoci, from built binaries).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p mesh-control -p ztunnel -p waypoint -p mesh-cni \
 && mkdir /out \
 && cp target/release/control target/release/ztunnel target/release/waypoint \
       target/release/mesh-cni target/release/mesh-cni-agent /out/ \
 && strip /out/*

# Small runtime base: glibc and libgcc only (the binaries need nothing else; TLS is rustls with ring).
FROM gcr.io/distroless/cc-debian12 AS runtime

FROM runtime AS control
COPY --from=build /out/control /usr/local/bin/control
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/control"]

# ztunnel runs as root with only NET_ADMIN and SYS_ADMIN (see charts/ztunnel/values.yaml).
FROM runtime AS ztunnel
COPY --from=build /out/ztunnel /usr/local/bin/ztunnel
ENTRYPOINT ["/usr/local/bin/ztunnel"]

FROM runtime AS waypoint
COPY --from=build /out/waypoint /usr/local/bin/waypoint
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/waypoint"]

# The node agent copies mesh-cni into the host's CNI bin directory and installs each mesh pod's rules with
# iptables inside the pod's namespace, so this image carries iptables (Debian's, nft backend).
FROM debian:bookworm-slim AS cni
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/mesh-cni /out/mesh-cni-agent /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/mesh-cni-agent"]
