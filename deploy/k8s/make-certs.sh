#!/bin/sh
# Makes the cluster CA and one certificate per pod (starling-0 .. starling-<COUNT-1>), then
# the Secret starling-cluster-tls that the StatefulSet mounts at /etc/starling/cluster:
#
#   deploy/k8s/make-certs.sh [DIR]          # default DIR: ./starling-cluster-ca
#   kubectl apply -f DIR/starling-cluster-tls.yaml
#
# It runs, for the CA and for each pod N:
#   starling cluster ca --out DIR
#   starling cluster cert --ca-dir DIR --name starling-N \
#     --san starling-N.starling-cluster.NS.svc --san starling-N.starling-cluster.NS.svc.CLUSTER_DOMAIN --out DIR
# and keeps files that already exist (run it again with a larger COUNT before scaling up).
# Every node certificate also carries the SAN `starling-node`, which is what nodes verify.
# DIR/ca-key.pem signs node certificates: keep it off the cluster (it is not in the Secret).
#
# Environment: STARLING_BIN (starling), NAMESPACE (starling), COUNT (5: room to scale to 5),
# CLUSTER_DOMAIN (cluster.local), KUBECTL (kubectl; without it the Secret is written by hand).
set -eu
DIR="${1:-./starling-cluster-ca}"
STARLING="${STARLING_BIN:-starling}"
NS="${NAMESPACE:-starling}"; COUNT="${COUNT:-5}"; DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
KUBECTL="${KUBECTL:-kubectl}"
STS=starling; SVC=starling-cluster; SECRET=starling-cluster-tls

[ -f "$DIR/ca.pem" ] || "$STARLING" cluster ca --out "$DIR"
files="ca.pem"
i=0
while [ "$i" -lt "$COUNT" ]; do
  name="$STS-$i"
  [ -f "$DIR/$name.pem" ] || "$STARLING" cluster cert --ca-dir "$DIR" --name "$name" \
    --san "$name.$SVC.$NS.svc" --san "$name.$SVC.$NS.svc.$DOMAIN" --out "$DIR"
  files="$files $name.pem $name-key.pem"
  i=$((i + 1))
done

out="$DIR/$SECRET.yaml"
if command -v "$KUBECTL" > /dev/null 2>&1; then
  set --
  for f in $files; do set -- "$@" "--from-file=$f=$DIR/$f"; done
  "$KUBECTL" create secret generic "$SECRET" --namespace "$NS" "$@" --dry-run=client -o yaml > "$out"
else
  {
    printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: Opaque\ndata:\n' "$SECRET" "$NS"
    for f in $files; do printf '  %s: %s\n' "$f" "$(base64 < "$DIR/$f" | tr -d '\n')"; done
  } > "$out"
fi
chmod 600 "$out"
echo "wrote $out (CA certificate and $COUNT pod certificates and keys; the CA key stays in $DIR)"
echo "next: kubectl apply -f $out"
