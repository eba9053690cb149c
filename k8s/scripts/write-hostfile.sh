#!/bin/sh
# Writes the Bytewax hostfile of a StatefulSet: one "host:port" line per process, in process id
# order, that `python -m bytewax.run` reads through BYTEWAX_HOSTFILE_PATH (process i listens on
# line i; its own id comes from BYTEWAX_POD_NAME minus "BYTEWAX_STATEFULSET_NAME-").
#
#   BYTEWAX_HOSTFILE_PATH     file to write (an emptyDir shared with the flow container)
#   BYTEWAX_STATEFULSET_NAME  the StatefulSet's name: pods are NAME-0 .. NAME-(R-1)
#   BYTEWAX_REPLICAS          R, the StatefulSet's spec.replicas (keep the two equal)
#   BYTEWAX_SERVICE_NAME      the governing headless Service (default: the StatefulSet's name)
#   BYTEWAX_PORT              the port every process listens on for its peers (default 9999)
#   POD_NAMESPACE             the namespace (downward API); CLUSTER_DOMAIN (default cluster.local)
set -eu

: "${BYTEWAX_HOSTFILE_PATH:?BYTEWAX_HOSTFILE_PATH is not set}"
: "${BYTEWAX_STATEFULSET_NAME:?BYTEWAX_STATEFULSET_NAME is not set}"
: "${BYTEWAX_REPLICAS:?BYTEWAX_REPLICAS is not set}"
: "${POD_NAMESPACE:?POD_NAMESPACE is not set}"
service="${BYTEWAX_SERVICE_NAME:-$BYTEWAX_STATEFULSET_NAME}"
port="${BYTEWAX_PORT:-9999}"
domain="${CLUSTER_DOMAIN:-cluster.local}"

case "$BYTEWAX_REPLICAS" in
  '' | *[!0-9]*) echo "BYTEWAX_REPLICAS must be a positive integer, got '$BYTEWAX_REPLICAS'" >&2
                 exit 2 ;;
esac
if [ "$BYTEWAX_REPLICAS" -lt 1 ]; then
  echo "BYTEWAX_REPLICAS must be at least 1" >&2
  exit 2
fi

tmp="$BYTEWAX_HOSTFILE_PATH.tmp"
: > "$tmp"
i=0
while [ "$i" -lt "$BYTEWAX_REPLICAS" ]; do
  echo "$BYTEWAX_STATEFULSET_NAME-$i.$service.$POD_NAMESPACE.svc.$domain:$port" >> "$tmp"
  i=$((i + 1))
done
mv "$tmp" "$BYTEWAX_HOSTFILE_PATH"
echo "hostfile $BYTEWAX_HOSTFILE_PATH: $BYTEWAX_REPLICAS process(es)"
cat "$BYTEWAX_HOSTFILE_PATH"
