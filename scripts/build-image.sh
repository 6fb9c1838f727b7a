#!/usr/bin/env bash
# Builds the mesh's four OCI images (control, ztunnel, waypoint, cni: the Dockerfile's targets, same entrypoints
# and users) without Docker or a registry: each is the component's stripped binaries plus the shared libraries
# they load, in an OCI image layout made with umoci (Debian package `umoci`).
# Usage: scripts/build-image.sh [BINARY_DIR (default target/release)] [OUTPUT_LAYOUT (default target/image/oci)]
# The layout's tags are the components' names; e.g. `skopeo copy oci:target/image/oci:ztunnel docker://...`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-target/release}
oci=${2:-target/image/oci}
command -v umoci >/dev/null || { echo "build-image: umoci not found: apt-get install umoci" >&2; exit 2; }
for b in control ztunnel waypoint mesh-cni mesh-cni-agent; do
  [ -x "$bin_dir/$b" ] || { echo "build-image: $bin_dir/$b missing: cargo build --release --bins" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$oci"
mkdir -p "$(dirname "$oci")"
umoci init --layout "$oci"

# component binaries user
images=(
  "control|control|65532:65532"
  "ztunnel|ztunnel|0:0"
  "waypoint|waypoint|65532:65532"
  "cni|mesh-cni-agent mesh-cni|0:0"
)
for spec in "${images[@]}"; do
  IFS='|' read -r name bins user <<<"$spec"
  umoci new --image "$oci:$name"
  umoci unpack --rootless --image "$oci:$name" "$work/$name" >/dev/null
  rootfs="$work/$name/rootfs"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  for b in $bins; do
    strip -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b"
    # The dynamic loader and every library the binary loads, at the paths it looks for them.
    for lib in $(ldd "$bin_dir/$b" | grep -oE '/[^ ]+\.so[^ ]*'); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  done
  if [ "$name" = cni ]; then
    # The agent runs iptables(-restore) inside each pod's namespace: the node's own iptables build (nft or legacy
    # multi-call binary), its libraries and its match/target modules.
    multi=$(readlink -f "$(command -v iptables)")
    mkdir -p "$rootfs/usr/sbin"
    cp -L "$multi" "$rootfs/usr/sbin/"
    for l in iptables iptables-restore iptables-save; do ln -sf "$(basename "$multi")" "$rootfs/usr/sbin/$l"; done
    for lib in $(ldd "$multi" | grep -oE '/[^ ]+\.so[^ ]*'); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
    for x in /usr/lib/*/xtables; do
      mkdir -p "$rootfs$x"
      cp -rL "$x/." "$rootfs$x/"
      for lib in $(ldd "$x"/*.so 2>/dev/null | grep -v ':$' | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
      done
    done
  fi
  entry=$(echo "$bins" | cut -d' ' -f1)
  umoci repack --image "$oci:$name" "$work/$name" >/dev/null
  umoci config --image "$oci:$name" --config.entrypoint "/usr/local/bin/$entry" --config.user "$user" \
    --config.label "org.opencontainers.image.title=$name" \
    --config.label "org.opencontainers.image.version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
done
umoci gc --layout "$oci"
echo "build-image: $oci with tags: control ztunnel waypoint cni"
