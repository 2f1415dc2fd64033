#!/usr/bin/env bash
# Export the trained student on worker 0 only (distil-whisper-export is one process: it converts and
# verifies the weights, nothing to split over hosts).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: export.sh --name TPU --zone ZONE --output-dir gs://B/export [--config F] -- --model gs-mounted-run-dir ..."
stage_opts
parse_args "$@"
stage_main export distil-whisper-export 0 0
