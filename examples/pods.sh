#!/usr/bin/env bash
# The pods of the by-hand setup (README "Running the mesh by hand"), made as a container runtime makes them on a
# Kubernetes node: one network namespace per pod, wired to the node's bridge `mesh-ex0` (198.18.1.1/24) by the
# real CNI `bridge` plugin with the addresses examples/cluster/pods.yaml declares, each running the demo app.
#
#   examples/pods.sh up       create the bridge and the pods, start the demo app in each (not in the waypoint's)
#   examples/pods.sh enroll   hand the mesh pods to the node agent through the mesh's CNI plugin (`mesh-cni`), as
#                             the runtime's plugin chain does at pod creation; the agent passes them to ztunnel
#   examples/pods.sh down     stop what runs in the pods, delete them and the bridge
#
# Needs root, Debian's containernetworking-plugins (scripts/deps.sh installs it) and the binaries in target/debug.
set -euo pipefail
cd "$(dirname "$0")/.."
cni_dir=/usr/lib/cni
work=/tmp/mesh-example
bin=target/debug
# name address version
pods=("sleep 198.18.1.2 -" "order-v1 198.18.1.3 v1" "order-v2 198.18.1.4 v2" "waypoint 198.18.1.5 -")
mesh=(sleep order-v1 order-v2)

# cni PLUGIN COMMAND POD CONFIG: one CNI call for a pod, the config on stdin, the result on stdout.
cni() {
  CNI_COMMAND=$2 CNI_CONTAINERID=mesh-ex-$3 CNI_NETNS=/run/netns/mesh-ex-$3 CNI_IFNAME=eth0 CNI_PATH=$cni_dir \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$3;K8S_POD_UID=example-$3" "$1" <<<"$4"
}

bridge_conf() {
  printf '{"cniVersion":"1.0.0","name":"mesh-example","type":"bridge","bridge":"mesh-ex0","isGateway":true,'
  printf '"ipMasq":false,"ipam":{"type":"static","addresses":[{"address":"%s/24","gateway":"198.18.1.1"}],' "$1"
  printf '"routes":[{"dst":"0.0.0.0/0"}]}}'
}

# The mesh plugin, chained after the bridge plugin: it reads the pod's address from the bridge's result.
mesh_conf() {
  printf '{"cniVersion":"1.0.0","name":"mesh-example","type":"mesh-cni","prevResult":%s,' "$1"
  printf '"ztunnel":{"runDir":"%s/run"}}' "$work"
}

up() {
  [ -x "$cni_dir/bridge" ] || { echo "error: $cni_dir/bridge is missing: run scripts/deps.sh (as root)" >&2; exit 1; }
  mkdir -p "$work"
  for p in "${pods[@]}"; do
    read -r name addr version <<<"$p"
    ip netns add "mesh-ex-$name"
    ip -n "mesh-ex-$name" link set lo up
    cni "$cni_dir/bridge" ADD "$name" "$(bridge_conf "$addr")" >"$work/cni-$name.json"
    [ "$name" = waypoint ] && continue
    POD_NAME=$name POD_VERSION=${version#-} setsid ip netns exec "mesh-ex-$name" "$bin/mesh-testapp" \
      >"$work/app-$name.log" 2>&1 </dev/null &
    echo "pod $name: $addr (netns mesh-ex-$name)"
  done
  echo "pod waypoint: 198.18.1.5 (netns mesh-ex-waypoint; start the waypoint in it)"
}

enroll() {
  # The agent may still be starting: wait for its socket (10 s at most).
  for _ in $(seq 100); do [ -S "$work/run/mesh-cni.sock" ] && break; sleep 0.1; done
  [ -S "$work/run/mesh-cni.sock" ] || { echo "error: no node agent at $work/run/mesh-cni.sock: start mesh-cni-agent first" >&2; exit 1; }
  for name in "${mesh[@]}"; do
    cni "$bin/mesh-cni" ADD "$name" "$(mesh_conf "$(cat "$work/cni-$name.json")")" >/dev/null
    echo "enrolled $name"
  done
}

down() {
  for p in "${pods[@]}"; do
    read -r name _ <<<"$p"
    [ -e "/run/netns/mesh-ex-$name" ] || continue
    ip netns pids "mesh-ex-$name" | xargs -r kill 2>/dev/null || true
    ip netns del "mesh-ex-$name"
  done
  ip link del mesh-ex0 2>/dev/null || true
  echo "pods and bridge removed (logs stay in $work)"
}

case "${1:-}" in
  up) up ;;
  enroll) enroll ;;
  down) down ;;
  *) echo "usage: examples/pods.sh up|enroll|down" >&2; exit 2 ;;
esac
