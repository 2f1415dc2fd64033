#!/usr/bin/env bash
# Delete the TPU VM slice (with --queued: the queued resource and its slice). Outputs on a bucket stay.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: delete.sh --name TPU --zone ZONE [--queued]"
common_opts
opt queued TPU_QUEUED bool 0 "the slice was made as a queued resource (create.sh --queued)"
parse_args "$@"
require name zone
mapfile -t flags < <(tpu_flags)
if ((TPU_QUEUED)); then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${flags[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${flags[@]}" --quiet
fi
