#!/usr/bin/env bash
# Runs as the first process of the tier's own pid + network + mount namespace
# (started by e2e/fullstack/run.sh; never run it directly). Everything it
# starts dies with it.
set -euo pipefail
cd "$ROOT"
. e2e/fullstack/lib.sh

[[ $$ == 1 ]] || { echo "inside.sh: not in the tier's pid namespace" >&2; exit 1; }
# A guard against ever configuring the root network namespace: this one
# starts with nothing but a down loopback.
if ip -o link show | grep -qv ': lo:'; then
  echo "inside.sh: the network namespace has links besides lo; refusing" >&2
  exit 1
fi
trap 'exit 130' INT TERM

# Network: loopback and the pod bridge; no uplink, no default route.
ip link set lo up
ip link add kbr0 type bridge
ip addr add 10.244.0.1/24 dev kbr0
ip link set kbr0 up
# ClusterIP Services (kube-proxy, nftables mode, started below): pods reach
# the service range through their default route via 10.244.0.1, which
# forwards after DNAT; this namespace's own processes get a route for it.
echo 1 >/proc/sys/net/ipv4/ip_forward
ip route add 10.96.0.0/16 dev kbr0

# A private /tmp (on disk, in the run directory), so the hostpath
# provisioner's /tmp/hostpath_pv and anything a component writes to /tmp
# never touch the machine's /tmp.
mkdir -p "$RUN/tmp"
# A checkout under /tmp would vanish behind that mount (every later `cd`, helm's chart path,
# the Python checkers): reach it through a bind mount in the run directory instead.
case "$ROOT/" in
  /tmp/*)
    mkdir -p "$RUN/src"
    mount --bind "$ROOT" "$RUN/src"
    export ROOT="$RUN/src"
    cd "$ROOT"
    ;;
esac
mount --bind "$RUN/tmp" /tmp
chmod 1777 /tmp
mkdir -p /tmp/hostpath_pv

t=$(now)
# The scheduler flag: a pod found unschedulable just before its PVC got bound
# was seen waiting the default 5 min in the unschedulable queue; 15 s caps it.
# The apiserver flags: the `kubernetes` Service's endpoint is the bridge
# address (kept by the apiserver's lease reconciler), so pods reach the API
# server through that Service's ClusterIP as in a real cluster.
proxy_token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$KINDEX_TESTENV" --controller-manager --scheduler \
  --extra-token "$proxy_token,system:kube-proxy,kube-proxy-uid" \
  --bind-address=0.0.0.0 --serving-ip=10.244.0.1 --port=6443 \
  --dir "$RUN/testenv" --kubeconfig-out "$KC" --max-lifetime 120m --ready-timeout 5m \
  --controller-manager-arg=--enable-hostpath-provisioner=true \
  --scheduler-arg=--pod-max-in-unschedulable-pods-duration=15s \
  --apiserver-arg=--advertise-address=10.244.0.1 --apiserver-arg=--endpoint-reconciler-type=lease \
  >"$RUN/testenv.out" 2>"$RUN/testenv.log" &
wait_line "$RUN/testenv.out" READY 300 || fatal "kindex-testenv not READY (see $RUN/testenv.log)"
info "control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) ready in $(since "$t")s"

k apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: hostpath
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF

# A node image that cannot start (scenario 10's rollout to a broken image): named
# kindex-node like the real one, since the pod's command is `kindex-node`.
mkdir -p "$RUN/bin/broken"
cat >"$RUN/bin/broken/kindex-node" <<'EOF'
#!/bin/sh
echo "kindex-node: this image is broken on purpose (the full-stack tier's kindex/kindex-node:broken)" >&2
exit 1
EOF
chmod 755 "$RUN/bin/broken" "$RUN/bin/broken/kindex-node"
cat >"$RUN/images" <<EOF
# image (untagged: every tag without its own line)   binary   image USER / WORKDIR
kindex/kindex-node         $RUN/bin/kindex-node          user=65532:65532 workdir=/data
kindex/kindex-node:broken  $RUN/bin/broken/kindex-node   user=65532:65532 workdir=/data
kindex/kindex-operator     $RUN/bin/kindex-operator      user=65532:65532
kindex-e2e/shell           /bin/sh
EOF
# Release v0.1.0's node (scenario 13's rolling upgrade starts from it), when run.sh provided it.
if [[ -x $RUN/bin/v0.1.0/kindex-node ]]; then
  echo "kindex/kindex-node:v0.1.0  $RUN/bin/v0.1.0/kindex-node   user=65532:65532 workdir=/data" >>"$RUN/images"
fi

t=$(now)
"$RUN/bin/kindex-agent" --kubeconfig "$KC" --nodes kindex-node-1,kindex-node-2,kindex-node-3 \
  --node-ip 10.244.0.1 --bridge kbr0 --pod-cidr 10.244.0.0/24 \
  --images "$RUN/images" --run-dir "$RUN/agent" --apiserver-host 10.244.0.1 --apiserver-port 6443 \
  --crash-backoff-base 2s --crash-backoff-max 60s \
  >"$RUN/agent.out" 2>"$RUN/agent.log" &
wait_line "$RUN/agent.out" READY 120 || fatal "kindex-agent not READY (see $RUN/agent.log)"
k wait --for=condition=Ready node --all --timeout=60s >/dev/null || fatal "nodes not Ready"
info "node agent serving $(k get nodes -o name | wc -l) Ready nodes in $(since "$t")s"

# kube-proxy of the same release, nftables mode, as the user kubeadm gives it
# (system:kube-proxy, bound to system:node-proxier). One instance serves the
# three Nodes: they share this network namespace, so one rule set routes for
# all of them. Conntrack sysctls are left alone (read-only outside the
# initial namespace); the tier needs no NodePorts.
t=$(now)
"$KINDEX_TESTENV" kubeconfig --from "$KC" --token "$proxy_token" --user system:kube-proxy \
  --out "$RUN/kube-proxy.kubeconfig"
"$KINDEX_TESTENV" proxy --proxy-mode=nftables --kubeconfig "$RUN/kube-proxy.kubeconfig" \
  --hostname-override=kindex-node-1 --cluster-cidr=10.244.0.0/24 \
  --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0s --conntrack-tcp-timeout-close-wait=0s \
  --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
  >"$RUN/kube-proxy.log" 2>&1 &
waitfor 120 bash -c '[[ $(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:10256/healthz) == 200 ]] && nft list table ip kube-proxy >/dev/null 2>&1' ||
  fatal "kube-proxy not healthy (see $RUN/kube-proxy.log)"
info "kube-proxy (nftables) routing ClusterIP Services in $(since "$t")s"

scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
for s in "${scenarios[@]}"; do
  f=$(ls e2e/fullstack/s"$s"-*.sh 2>/dev/null | head -1)
  [[ -n "$f" ]] || fatal "no scenario $s"
  . "$f"
done
summary
