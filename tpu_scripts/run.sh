#!/usr/bin/env bash
# The whole chain on one slice: preflight, then student → label → distill → eval → export, each through its stage
# script. When a stage fails and the slice is no longer READY (PREEMPTED, gone), it waits, brings the slice back
# (create.sh + setup.sh; a queued resource that is still queued keeps its place) and re-runs the stage, which
# resumes on its own (labelling from its finished blocks, distillation from its last checkpoint; the stage's
# worker-side prefix first stops any copy a previous run left and frees the TPU). A failure on a READY slice is
# retried after the wait. --max-retries counts failures WITHOUT progress: a re-run that saved a new checkpoint or
# finished new blocks refills it, so a stage of several days survives any number of preemptions. Waiting for
# capacity (create.sh exit 3) backs off and does not count. Every setting of create.sh and setup.sh is read from
# the environment or given here.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: run.sh --name TPU --zone ZONE --accelerator-type v4-8 --git-url URL --bucket B --output-dir gs://B/exp \\
    --recipe tpu_scripts/recipes/distil-large-v2 --dataset D --eval-dataset H [--stages label,distill,...]"
common_opts
slice_opts
opt git-url GIT_URL value "" "install from this git repository (setup.sh)"
opt git-ref GIT_REF value main "git ref (setup.sh)"
opt wheel WHEEL value "" "install this wheel instead (setup.sh)"
opt bucket BUCKET value "" "gs:// bucket every worker must write (setup.sh; default: the --output-dir bucket)"
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
opt max-retries MAX_RETRIES value 3 "re-runs of a failed stage without progress before giving up (progress refills them)"
opt retry-wait RETRY_WAIT value 60 "seconds to wait before a re-run (and before re-creating a slice)"
opt capacity-wait-max CAPACITY_WAIT_MAX value 1800 "longest back-off between creates refused for capacity (seconds)"
opt capacity-timeout CAPACITY_TIMEOUT value 0 "give up after waiting this long for capacity (seconds; 0: never)"
opt skip-preflight SKIP_PREFLIGHT bool 0 "do not run preflight.sh before the first stage"
opt log-dir LOG_DIR value ./tpu_logs "local directory of the per-worker logs"
opt allow-local-output ALLOW_LOCAL_OUTPUT bool 0 "accept an --output-dir on the workers' disks (lost with a re-created slice)"
parse_args "$@"
require name zone accelerator-type output-dir
[[ "$MAX_RETRIES" =~ ^[0-9]+$ ]] || die "--max-retries '$MAX_RETRIES' (MAX_RETRIES): expected a count"
for n in RETRY_WAIT CAPACITY_WAIT_MAX CAPACITY_TIMEOUT; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n=${!n}: expected seconds"
done
base="${RUN_OUTPUT_DIR%/}"
[[ "$base" == gs://* ]] || ((ALLOW_LOCAL_OUTPUT)) || die "--output-dir $base (OUTPUT_DIR): not a gs:// bucket URL;" \
  "outputs on a worker's disk are lost when a preempted slice is re-created, and a pod's hosts do not share them" \
  "(--allow-local-output to accept it)"
[[ -n "$BUCKET" || "$base" != gs://* ]] || BUCKET="$base"
# A run of days may re-create its slice: every set-up must install the same code, so a branch or tag is pinned to
# its commit now (when the repository can be reached from here).
if [[ -n "$GIT_URL" && ! "$GIT_REF" =~ ^[0-9a-f]{40}$ ]]; then
  if ((DRY_RUN)); then
    printf '+ git ls-remote %s %s\n' "$(squote "$GIT_URL")" "$(squote "$GIT_REF")"
  elif commit="$(GIT_TERMINAL_PROMPT=0 timeout 60 git ls-remote "$GIT_URL" "$GIT_REF" "$GIT_REF^{}" 2>/dev/null |
    sort -k2 | tail -1 | cut -f1)" && [[ -n "$commit" ]]; then
    echo "run.sh: $GIT_URL $GIT_REF is commit $commit: every set-up of this run installs it" >&2
    GIT_REF="$commit"
  else
    echo "run.sh: warning: could not resolve $GIT_REF of $GIT_URL from here; each set-up installs whatever it is then" >&2
  fi
fi
export TPU_NAME ZONE PROJECT DRY_RUN ACCELERATOR_TYPE RUNTIME_VERSION TPU_SPOT TPU_PREEMPTIBLE TPU_QUEUED \
  GIT_URL GIT_REF WHEEL BUCKET LOG_DIR GLOBAL_BATCH_SIZE
if [[ -n "$RECIPE" ]]; then
  [[ -d "$RECIPE" ]] || die "--recipe $RECIPE (RECIPE): no such directory (see tpu_scripts/recipes/)"
  : "${STUDENT_CONFIG:=$RECIPE/student.yaml}" "${LABEL_CONFIG:=$RECIPE/label.yaml}" "${DISTILL_CONFIG:=$RECIPE/distill.yaml}"
fi

# stage_command STAGE: fills CMD with the stage script's command line; the stages are wired through
# the output dirs (student → distill, label → distill, distill → eval and export).
stage_command() {
  local config="" extra=()
  case "$1" in
  student) # the chain's own student dir: a re-run (or a retry after a preemption) writes the same student again
    config="$STUDENT_CONFIG"
    extra+=(--overwrite_output_dir)
    ;;
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
  # every host and every retry after a preemption loads the stage's compiled programs from one cache on the bucket
  # (JAX writes it from process 0 only, so per-host caches would leave the other hosts compiling)
  [[ "$1" == student || "$base" != gs://* ]] || extra+=(--compilation_cache_dir "$base/xla_cache")
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

# give_up MESSAGE: stop, saying that the slice (if it still exists) keeps running and billing, and how to delete it.
give_up() {
  local state msg="$1" q="" qstate=NOT_FOUND
  state="$(tpu_state)"
  if ((TPU_QUEUED)); then
    q=" --queued"
    qstate="$(queued_state)"
  fi
  if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
    msg+=". The slice $TPU_NAME still exists ($state: it holds its name and quota)"
  elif [[ "$state" != NOT_FOUND ]]; then
    msg+=". The slice $TPU_NAME is still running ($state) and billing"
  elif [[ "$qstate" != NOT_FOUND ]]; then
    msg+=". The queued resource $TPU_NAME is $qstate: the slice it provisions will bill"
  fi
  [[ "$state" == NOT_FOUND && "$qstate" == NOT_FOUND ]] ||
    msg+=": delete it with tpu_scripts/delete.sh --name $TPU_NAME --zone $ZONE$q (outputs under $base stay)"
  die "$msg"
}

# stage_progress STAGE: what a stage has saved so far on the bucket (its checkpoints, its finished blocks), as a
# listing; a change between two failures is progress. Empty for other stages and outputs off a bucket.
stage_progress() {
  local dir
  case "$1" in
  distill) dir="$base/distill/checkpoints/" ;;
  label) dir="$base/labelled/.plabel/" ;;
  *) return 0 ;;
  esac
  [[ "$dir" == gs://* ]] && ((!DRY_RUN)) || return 0
  gcloud storage ls "$dir" 2>/dev/null || true
}

# bring_back [fresh]: make the slice READY and set it up again. A READY slice (one whose set-up failed before) is only set
# up; one that is PREEMPTED, TERMINATED or gone is deleted (a plain slice) and created again (a queued resource
# that is still queued keeps its place: create.sh waits for it). Capacity refusals (create.sh exit 3) back off,
# doubling from --retry-wait up to --capacity-wait-max, and never spend a retry; --capacity-timeout bounds the
# wait. Until set-up succeeds, SLICE_NEEDS_SETUP stays 1, so the next failure brings it back again.
SLICE_NEEDS_SETUP=0
bring_back() {
  local pause="$RETRY_WAIT" waited=0 code state
  SLICE_NEEDS_SETUP=1
  state="$(tpu_state)"
  [[ "${1:-}" != fresh ]] || ((!DRY_RUN)) || state=NOT_FOUND # a dry run of --create-first shows the create
  echo "run.sh: bringing $TPU_NAME up (it is $state)" >&2
  if [[ "$state" != READY ]]; then
    if [[ "$state" != NOT_FOUND ]] && ((!TPU_QUEUED)); then
      "$TPU_SCRIPTS_DIR/delete.sh" || echo "run.sh: delete failed (already gone?); creating anyway" >&2
    fi
    while :; do
      if "$TPU_SCRIPTS_DIR/create.sh"; then break; else code=$?; fi
      ((code == 3)) || return 1
      ((CAPACITY_TIMEOUT == 0 || waited < CAPACITY_TIMEOUT)) ||
        give_up "no capacity for $ACCELERATOR_TYPE in $ZONE after ${waited}s (--capacity-timeout $CAPACITY_TIMEOUT)"
      echo "run.sh: no capacity for $TPU_NAME yet; trying again in ${pause}s (not counted as a retry)" >&2
      run sleep "$pause"
      waited=$((waited + pause))
      pause=$((pause * 2 > CAPACITY_WAIT_MAX ? CAPACITY_WAIT_MAX : pause * 2))
      ((pause > 0)) || pause=1
    done
  fi
  "$TPU_SCRIPTS_DIR/setup.sh" || return 1
  SLICE_NEEDS_SETUP=0
}

# run_stage STAGE: run it; on failure wait, bring the slice back when it is not READY, and re-run. Failures are
# counted since the stage last made progress (stage_progress), so long stages survive many preemptions.
run_stage() {
  local stage="$1" failures=0 state before after
  stage_command "$stage"
  before="$(stage_progress "$stage")"
  until "${CMD[@]}"; do
    after="$(stage_progress "$stage")"
    if [[ "$after" != "$before" ]]; then
      ((failures == 0)) || echo "run.sh: stage $stage made progress before failing: retries refilled" >&2
      failures=0
      before="$after"
    fi
    failures=$((failures + 1))
    ((failures <= MAX_RETRIES)) ||
      give_up "stage $stage failed $failures times (--max-retries $MAX_RETRIES) without progress; giving up"
    state="$(tpu_state)"
    echo "run.sh: stage $stage failed (TPU state: $state); retry $failures of $MAX_RETRIES in ${RETRY_WAIT}s" >&2
    run sleep "$RETRY_WAIT"
    # Only a slice that is really gone is re-created: a describe that failed (UNKNOWN) or a slice being repaired
    # or restarted is waited for, never deleted.
    case "$state" in
    PREEMPTED | TERMINATED | NOT_FOUND) bring_back || echo "run.sh: bringing $TPU_NAME back failed; will retry" >&2 ;;
    READY) ;;
    *) echo "run.sh: $TPU_NAME is $state: waiting, not re-creating it" >&2 ;;
    esac
    # a slice whose set-up failed (after it was re-created) is set up again before the stage runs on it
    if ((SLICE_NEEDS_SETUP)) && [[ "$(tpu_state)" == READY ]]; then
      echo "run.sh: $TPU_NAME is READY but not set up; setting it up again in ${RETRY_WAIT}s" >&2
      run sleep "$RETRY_WAIT"
      bring_back || echo "run.sh: setting up $TPU_NAME failed; will retry" >&2
    fi
  done
}

# check_preemptible: a preemptible slice ends after 24 hours; refuse one for a distillation the recipe estimates
# longer (its "~N TPU v4 chip-hours", scaled to this slice's chips and their peak), and recommend --spot.
check_preemptible() {
  ((TPU_PREEMPTIBLE)) && [[ ",$STAGES," == *,distill,* ]] || return 0
  local chip_hours hours
  if [[ -z "$DISTILL_CONFIG" || ! -f "$DISTILL_CONFIG" ]]; then
    echo "run.sh: warning: --preemptible slices end after 24 hours, and there is no recipe estimate to check against" >&2
    return 0
  fi
  chip_hours="$(grep -oE '~[0-9]+ TPU v4 chip-hours' "$DISTILL_CONFIG" | head -1 | tr -dc 0-9)" || true
  [[ -n "$chip_hours" ]] || return 0
  hours="$(awk -v c="$chip_hours" -v p="$(chip_tflops "$ACCELERATOR_TYPE")" -v n="$(slice_chips "$ACCELERATOR_TYPE")" \
    'BEGIN { printf "%.0f", c * 275 / p / n }')"
  ((hours <= 24)) || die "--preemptible: a preemptible slice ends after 24 hours, and $DISTILL_CONFIG estimates" \
    "~$chip_hours v4 chip-hours, ~$hours h on a $ACCELERATOR_TYPE; use --spot (no run-time limit; run.sh resumes after preemptions)"
}

IFS=, read -r -a stage_list <<<"$STAGES"
for stage in "${stage_list[@]}"; do
  stage_command "$stage"
done
check_preemptible
if ((CREATE_FIRST)); then
  bring_back fresh || give_up "creating or setting up $TPU_NAME failed"
fi
if ((!SKIP_PREFLIGHT)); then
  preflight=("$TPU_SCRIPTS_DIR/preflight.sh")
  [[ "$base" != gs://* ]] || preflight+=(--bucket "$base/preflight")
  "${preflight[@]}" || give_up "preflight.sh found a problem (the table above says what and how to fix it)"
fi
for stage in "${stage_list[@]}"; do
  run_stage "$stage"
done
if ((DELETE_AFTER)); then
  "$TPU_SCRIPTS_DIR/delete.sh"
fi
echo "run.sh: stages $STAGES done; outputs under $base" >&2
