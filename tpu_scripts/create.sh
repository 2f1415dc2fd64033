#!/usr/bin/env bash
# Create the TPU VM slice (or, with --queued, a queued resource that provisions it when capacity frees up)
# and wait until it is READY.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: create.sh --name TPU --zone ZONE --accelerator-type v4-8 [--version RUNTIME] [--spot|--preemptible] [--queued]"
create_opts() {
  opt accelerator-type ACCELERATOR_TYPE value v4-8 "slice type: v4-8 (4 chips), v4-32 (16 chips), ..." TPU_ACCELERATOR
  opt version RUNTIME_VERSION value tpu-ubuntu2204-base "TPU VM runtime (software) version" TPU_RUNTIME
  opt spot TPU_SPOT bool 0 "spot capacity (cheaper, may be preempted at any time)"
  opt preemptible TPU_PREEMPTIBLE bool 0 "preemptible capacity (the older form of --spot)"
  opt queued TPU_QUEUED bool 0 "create a queued resource (gcloud compute tpus queued-resources) instead"
  opt wait-timeout TPU_WAIT_TIMEOUT value 3600 "seconds to wait for the slice to become READY"
}
common_opts
create_opts
parse_args "$@"
require name zone accelerator-type version
expected_devices "$ACCELERATOR_TYPE" >/dev/null # an unknown slice type fails here, before gcloud
((TPU_SPOT && TPU_PREEMPTIBLE)) && die "--spot and --preemptible exclude each other"
mapfile -t flags < <(tpu_flags)
capacity=()
((TPU_SPOT)) && capacity+=(--spot)
if ((TPU_QUEUED)); then
  ((TPU_PREEMPTIBLE)) && die "--queued takes --spot, not --preemptible"
  run gcloud compute tpus queued-resources create "$TPU_NAME" "${flags[@]}" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${capacity[@]}"
else
  ((TPU_PREEMPTIBLE)) && capacity+=(--preemptible)
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${capacity[@]}"
fi
waited=0
until [[ "$(tpu_state)" == READY ]]; do
  ((waited < TPU_WAIT_TIMEOUT)) || die "$TPU_NAME is not READY after ${TPU_WAIT_TIMEOUT}s (gcloud compute tpus tpu-vm describe)"
  sleep 30
  waited=$((waited + 30))
done
echo "$TPU_NAME ($ACCELERATOR_TYPE) is READY" >&2
