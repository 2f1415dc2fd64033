#!/usr/bin/env bash
# The whole chain on one slice: student → label → distill → eval → export, each through its stage script. When a
# stage fails and the slice is no longer READY (PREEMPTED, gone), it waits, deletes and re-creates the slice
# (create.sh + setup.sh) and re-runs the stage, which resumes on its own (labelling from its finished
# blocks, distillation from its last checkpoint). A failure on a READY slice is retried after the wait.
# Every setting of create.sh and setup.sh is read from the environment or given here.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: run.sh --name TPU --zone ZONE --accelerator-type v4-8 --git-url URL --bucket B --output-dir gs://B/exp \\
    --recipe tpu_scripts/recipes/distil-large-v2 --dataset D --eval-dataset H [--stages label,distill,...]"
common_opts
opt accelerator-type ACCELERATOR_TYPE value v4-8 "slice type (for create.sh and setup.sh)" TPU_ACCELERATOR
opt version RUNTIME_VERSION value tpu-ubuntu2204-base "TPU VM runtime version (create.sh)" TPU_RUNTIME
opt spot TPU_SPOT bool 0 "spot capacity (create.sh)"
opt preemptible TPU_PREEMPTIBLE bool 0 "preemptible capacity (create.sh)"
opt queued TPU_QUEUED bool 0 "queued resource (create.sh, delete.sh)"
opt git-url GIT_URL value "" "install from this git repository (setup.sh)"
opt git-ref GIT_REF value main "git ref (setup.sh)"
opt wheel WHEEL value "" "install this wheel instead (setup.sh)"
opt bucket BUCKET value "" "gs:// bucket mounted on the workers (setup.sh)"
opt output-dir RUN_OUTPUT_DIR value "" "base of the outputs: BASE/student, BASE/labelled, BASE/distill, BASE/eval, BASE/export" OUTPUT_DIR
opt recipe RECIPE value "" "a recipes/ directory: its student.yaml, label.yaml, distill.yaml are the default configs"
opt dataset DATASET value "" "--dataset_name of labelling (the audio to distil on)"
opt eval-dataset EVAL_DATASET value "" "held-out --dataset_name of eval (and --eval_dataset_name of distill)"
opt student-config STUDENT_CONFIG value "" "--config of distil-whisper-create-student (default: RECIPE/student.yaml)"
opt label-config LABEL_CONFIG value "" "--config of distil-whisper-pseudo-label (default: RECIPE/label.yaml)"
opt distill-config DISTILL_CONFIG value "" "--config of distil-whisper-distill (default: RECIPE/distill.yaml)"
opt eval-config EVAL_CONFIG value "" "--config of distil-whisper-eval (the held-out dataset)"
opt export-config EXPORT_CONFIG value "" "--config of distil-whisper-export"
opt global-batch-size GLOBAL_BATCH_SIZE value "" "distill.sh --global-batch-size: keep a recipe's global batch (256) on any slice"
opt stages STAGES value student,label,distill,eval,export "comma-separated stages to run, in order"
opt create-first CREATE_FIRST bool 0 "create and set up the slice before the first stage"
opt delete-after DELETE_AFTER bool 0 "delete the slice when every stage succeeded"
opt max-retries MAX_RETRIES value 3 "re-runs of a failed stage before giving up"
opt retry-wait RETRY_WAIT value 60 "seconds to wait before a re-run (and before re-creating a slice)"
opt log-dir LOG_DIR value ./tpu_logs "local directory of the per-worker logs"
parse_args "$@"
require name zone accelerator-type output-dir
[[ "$MAX_RETRIES" =~ ^[0-9]+$ ]] || die "--max-retries '$MAX_RETRIES' (MAX_RETRIES): expected a count"
[[ "$RETRY_WAIT" =~ ^[0-9]+$ ]] || die "--retry-wait '$RETRY_WAIT' (RETRY_WAIT): expected seconds"
export TPU_NAME ZONE PROJECT DRY_RUN ACCELERATOR_TYPE RUNTIME_VERSION TPU_SPOT TPU_PREEMPTIBLE TPU_QUEUED \
  GIT_URL GIT_REF WHEEL BUCKET LOG_DIR GLOBAL_BATCH_SIZE
base="${RUN_OUTPUT_DIR%/}"
if [[ -n "$RECIPE" ]]; then
  [[ -d "$RECIPE" ]] || die "--recipe $RECIPE (RECIPE): no such directory (see tpu_scripts/recipes/)"
  : "${STUDENT_CONFIG:=$RECIPE/student.yaml}" "${LABEL_CONFIG:=$RECIPE/label.yaml}" "${DISTILL_CONFIG:=$RECIPE/distill.yaml}"
fi

# stage_command STAGE: fills CMD with the stage script's command line; the stages are wired through
# the output dirs (student → distill, label → distill, distill → eval and export).
stage_command() {
  local config="" extra=()
  case "$1" in
  student) config="$STUDENT_CONFIG" ;;
  label)
    config="$LABEL_CONFIG"
    [[ -z "$DATASET" ]] || extra+=(--dataset_name "$DATASET")
    ;;
  distill)
    config="$DISTILL_CONFIG"
    extra+=(--model_name_or_path "$base/student" --train_dataset_name "$base/labelled")
    [[ -z "$EVAL_DATASET" ]] || extra+=(--eval_dataset_name "$EVAL_DATASET")
    ;;
  eval)
    config="$EVAL_CONFIG"
    extra+=(--model_name_or_path "$base/distill")
    [[ -z "$EVAL_DATASET" ]] || extra+=(--dataset_name "$EVAL_DATASET")
    ;;
  export)
    config="$EXPORT_CONFIG"
    extra+=(--model "$base/distill")
    ;;
  *) die "--stages: unknown stage '$1' (student, label, distill, eval, export)" ;;
  esac
  CMD=("$TPU_SCRIPTS_DIR/$1.sh" --output-dir "$base/$(output_name "$1")")
  [[ -z "$config" ]] || CMD+=(--config "$config")
  CMD+=(-- "${extra[@]}")
}

output_name() {
  case "$1" in
  label) echo labelled ;;
  *) echo "$1" ;;
  esac
}

recreate() {
  echo "run.sh: re-creating $TPU_NAME" >&2
  "$TPU_SCRIPTS_DIR/delete.sh" || echo "run.sh: delete failed (already gone?); creating anyway" >&2
  "$TPU_SCRIPTS_DIR/create.sh" && "$TPU_SCRIPTS_DIR/setup.sh"
}

# run_stage STAGE: run it, and on failure wait, re-create the slice when it is not READY, and re-run.
run_stage() {
  local stage="$1" tries=0 state
  stage_command "$stage"
  until "${CMD[@]}"; do
    tries=$((tries + 1))
    ((tries <= MAX_RETRIES)) || die "stage $stage failed $tries times (--max-retries $MAX_RETRIES); giving up"
    state="$(tpu_state)"
    echo "run.sh: stage $stage failed (TPU state: $state); retry $tries of $MAX_RETRIES in ${RETRY_WAIT}s" >&2
    run sleep "$RETRY_WAIT"
    if [[ "$state" != READY ]]; then
      recreate || echo "run.sh: re-creating $TPU_NAME failed; will retry" >&2
    fi
  done
}

if ((CREATE_FIRST)); then
  "$TPU_SCRIPTS_DIR/create.sh"
  "$TPU_SCRIPTS_DIR/setup.sh"
fi
IFS=, read -r -a stage_list <<<"$STAGES"
for stage in "${stage_list[@]}"; do
  stage_command "$stage"
done
for stage in "${stage_list[@]}"; do
  run_stage "$stage"
done
if ((DELETE_AFTER)); then
  "$TPU_SCRIPTS_DIR/delete.sh"
fi
echo "run.sh: stages $STAGES done; outputs under $base" >&2
