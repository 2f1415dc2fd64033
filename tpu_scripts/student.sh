#!/usr/bin/env bash
# Create the student (the teacher's encoder and chosen decoder layers) on worker 0 only:
# distil-whisper-create-student is one process. It refuses a non-empty --output-dir unless given
# -- --overwrite_output_dir (run.sh passes it: a re-run there writes the same student again).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: student.sh --name TPU --zone ZONE --output-dir gs://B/student [--config recipes/R/student.yaml] [-- create-student flags...]"
stage_opts
parse_args "$@"
stage_main student distil-whisper-create-student 0 0
