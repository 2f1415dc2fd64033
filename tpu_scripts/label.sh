#!/usr/bin/env bash
# Pseudo-label on every worker of the slice at once (distil-whisper-pseudo-label --jax_distributed): each
# host labels its own blocks; a re-run of the same command continues where a killed one stopped.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: label.sh --name TPU --zone ZONE --output-dir gs://B/labelled [--config F] [-- pseudo-label flags...]"
stage_opts
parse_args "$@"
stage_main label distil-whisper-pseudo-label all 1
