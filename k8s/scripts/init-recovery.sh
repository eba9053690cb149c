#!/bin/sh
# Creates this pod's share of the Bytewax recovery partitions when it holds none of them yet.
#
# Bytewax needs every partition part-0 .. part-(N-1) to exist exactly once across the cluster
# (a process may hold any number of them, or none). Pod k creates the partitions i with
# i mod R0 == k, R0 being the replica count the store is created with: the partitions spread
# evenly over one-volume-per-pod, pods added later (k >= R0) hold none, and no partition is ever
# created twice. (Initialising all N in every pod makes duplicates, and after a rescale Bytewax
# may pick an empty duplicate and silently start over.) On one volume shared by all pods the
# same rule creates each partition once, without races.
#
#   BYTEWAX_RECOVERY_DIRECTORY      the recovery directory (= the -r argument of bytewax.run)
#   BYTEWAX_RECOVERY_PARTS          N, the number of partitions (fixed for the store's life)
#   BYTEWAX_RECOVERY_INIT_REPLICAS  R0 (default BYTEWAX_REPLICAS, else N: one partition per pod)
#   BYTEWAX_POD_NAME                the pod's name NAME-k (default: `hostname`, which is the
#                                   pod's name in a StatefulSet); a name without "-k" counts as k = 0
#
# `python -m bytewax.recovery` runs in a temporary directory on the same volume and the pod's
# partitions are renamed into place, so a partition is never seen half written. The file
# .bytewax-store records N and R0; a later run with other values stops with an error instead of
# creating partitions that may already exist elsewhere.
set -eu

dir="${BYTEWAX_RECOVERY_DIRECTORY:?BYTEWAX_RECOVERY_DIRECTORY is not set}"
parts="${BYTEWAX_RECOVERY_PARTS:?BYTEWAX_RECOVERY_PARTS is not set}"
init_replicas="${BYTEWAX_RECOVERY_INIT_REPLICAS:-${BYTEWAX_REPLICAS:-$parts}}"
pod="${BYTEWAX_POD_NAME:-}"
[ -n "$pod" ] || pod="$(hostname 2>/dev/null || true)"
python="${PYTHON:-python}"

is_count() {
  case "$1" in '' | *[!0-9]*) return 1 ;; esac
  [ "$1" -ge 1 ]
}
is_count "$parts" || { echo "BYTEWAX_RECOVERY_PARTS must be >= 1, got '$parts'" >&2; exit 2; }
is_count "$init_replicas" || {
  echo "BYTEWAX_RECOVERY_INIT_REPLICAS must be >= 1, got '$init_replicas'" >&2; exit 2; }

ordinal="${pod##*-}"
case "$ordinal" in '' | *[!0-9]*) ordinal=0 ;; esac

mkdir -p "$dir"
layout="parts=$parts init_replicas=$init_replicas"
marker="$dir/.bytewax-store"
if [ -f "$marker" ]; then
  recorded="$(cat "$marker")"
  if [ "$recorded" != "$layout" ]; then
    echo "recovery: $dir was created with '$recorded' but this pod says '$layout';" \
         "restore BYTEWAX_RECOVERY_PARTS / BYTEWAX_RECOVERY_INIT_REPLICAS, or reset the store" \
         "(delete every recovery volume of the StatefulSet)" >&2
    exit 1
  fi
fi

# The partitions this pod is responsible for.
mine=""
i="$ordinal"
while [ "$ordinal" -lt "$init_replicas" ] && [ "$i" -lt "$parts" ]; do
  mine="$mine $i"
  i=$((i + init_replicas))
done
if [ -z "$mine" ]; then
  echo "recovery: pod ${pod:-?} (ordinal $ordinal) holds no partition: the store was made for" \
       "$init_replicas pod(s) and $parts partition(s), the other pods hold them"
  exit 0
fi

for i in $mine; do
  if [ -e "$dir/part-$i.sqlite3" ]; then
    echo "recovery: $dir already holds partition $i; resuming from the existing store"
    exit 0
  fi
done

# Leftovers of an interrupted run of this pod (never another pod's: one pod per ordinal).
rm -rf "$dir/.init-$ordinal".*
tmp="$dir/.init-$ordinal.$$"
mkdir -p "$tmp"
"$python" -m bytewax.recovery "$tmp" "$parts"
for i in $mine; do
  mv "$tmp/part-$i.sqlite3" "$dir/part-$i.sqlite3"
done
rm -rf "$tmp"
echo "$layout" > "$marker.$$"
mv "$marker.$$" "$marker"
echo "recovery: created partition(s)$mine of $parts in $dir"
