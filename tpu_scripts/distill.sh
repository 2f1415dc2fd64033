#!/usr/bin/env bash
# Distil on every worker of the slice at once (distil-whisper-distill --jax_distributed): one data-parallel
# run over all chips; a re-run of the same command resumes from the run's latest checkpoint.
# --global-batch-size G with --accelerator-type sets --per_device_train_batch_size G / devices, so a
# recipe's global batch stays the same on a v4-8 and a v4-32.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: distill.sh --name TPU --zone ZONE --output-dir gs://B/run [--config recipe.yaml] [--global-batch-size 256 --accelerator-type v4-32] [-- distill flags...]"
stage_opts
opt global-batch-size GLOBAL_BATCH_SIZE value "" "examples per optimizer step over the whole slice (sets --per_device_train_batch_size)"
opt accelerator-type ACCELERATOR_TYPE value v4-8 "slice type, e.g. v4-32 (for --global-batch-size)" TPU_ACCELERATOR
parse_args "$@"
if [[ -n "$GLOBAL_BATCH_SIZE" ]]; then
  require accelerator-type
  [[ "$GLOBAL_BATCH_SIZE" =~ ^[0-9]+$ ]] || die "--global-batch-size '$GLOBAL_BATCH_SIZE': expected a positive integer"
  devices="$(expected_devices "$ACCELERATOR_TYPE")"
  ((GLOBAL_BATCH_SIZE % devices == 0 && GLOBAL_BATCH_SIZE > 0)) ||
    die "--global-batch-size $GLOBAL_BATCH_SIZE is not a multiple of the $devices devices of a $ACCELERATOR_TYPE"
  EXTRA_ARGS=(--per_device_train_batch_size "$((GLOBAL_BATCH_SIZE / devices))" "${EXTRA_ARGS[@]}")
fi
stage_main distill distil-whisper-distill all 1
