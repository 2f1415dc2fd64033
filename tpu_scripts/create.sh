#!/usr/bin/env bash
# Create the TPU VM slice (or, with --queued, a queued resource that provisions it when capacity frees up)
# and wait until it is READY.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: create.sh --name TPU --zone ZONE --accelerator-type v4-8 [--version RUNTIME] [--spot|--preemptible] [--queued]"
create_opts() {
  opt accelerator-type TPU_ACCELERATOR value "" "slice type: v4-8 (4 chips), v4-32 (16 chips), ..."
  opt version TPU_RUNTIME value tpu-ubuntu2204-base "TPU VM runtime (software) version"
  opt spot TPU_SPOT bool 0 "spot capacity (cheaper, may be preempted at any time)"
  opt preemptible TPU_PREEMPTIBLE bool 0 "preemptible capacity (the older form of --spot)"
  opt queued TPU_QUEUED bool 0 "create a queued resource (gcloud compute tpus queued-resources) instead"
  opt wait-timeout TPU_WAIT_TIMEOUT value 3600 "seconds to wait for the slice to become READY"
}
common_opts
create_opts
parse_args "$@"
require name zone accelerator-type version
((TPU_SPOT && TPU_PREEMPTIBLE)) && die "--spot and --preemptible exclude each other"
mapfile -t flags < <(tpu_flags)
capacity=()
((TPU_SPOT)) && capacity+=(--spot)
if ((TPU_QUEUED)); then
  ((TPU_PREEMPTIBLE)) && die "--queued takes --spot, not --preemptible"
  run gcloud compute tpus queued-resources create "$TPU_NAME" "${flags[@]}" --node-id="$TPU_NAME" \
    --accelerator-type="$TPU_ACCELERATOR" --runtime-version="$TPU_RUNTIME" "${capacity[@]}"
else
  ((TPU_PREEMPTIBLE)) && capacity+=(--preemptible)
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" \
    --accelerator-type="$TPU_ACCELERATOR" --version="$TPU_RUNTIME" "${capacity[@]}"
fi
waited=0
until [[ "$(tpu_state)" == READY ]]; do
  ((waited < TPU_WAIT_TIMEOUT)) || die "$TPU_NAME is not READY after ${TPU_WAIT_TIMEOUT}s (gcloud compute tpus tpu-vm describe)"
  sleep 30
  waited=$((waited + 30))
done
echo "$TPU_NAME ($TPU_ACCELERATOR) is READY" >&2
