#!/usr/bin/env bash
# Evaluate on every worker of the slice at once (distil-whisper-eval --jax_distributed): each host
# transcribes its own rows, process 0 merges the parts into results.json / results.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: eval.sh --name TPU --zone ZONE --output-dir gs://B/eval [--config F] -- --model_name_or_path M --dataset_name D ..."
stage_opts
parse_args "$@"
stage_main eval distil-whisper-eval all 1
