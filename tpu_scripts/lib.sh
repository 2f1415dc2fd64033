# shellcheck shell=bash
# Shared by the tpu_scripts/*.sh: flag / environment-variable parsing, the `run` wrapper behind --dry-run,
# and the one `gcloud compute tpus tpu-vm ssh --worker=all` command every stage goes through.
# Sourced, never run. Needs bash >= 4 (associative arrays).

TPU_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export TPU_SCRIPTS_DIR

declare -a _OPT_ORDER=()
declare -A _OPT_VAR=() _OPT_KIND=() _OPT_HELP=()
declare -a EXTRA_ARGS=()
_USAGE=""

# opt NAME VAR KIND DEFAULT HELP [ALIAS]: a flag --NAME (dashes and underscores both accepted) that sets
# the variable VAR, which the environment may also set (or ALIAS, an older name of VAR); KIND is "value" or
# "bool" (bools are 0/1).
declare -A _OPT_ALIAS=()
opt() {
  local name="$1" var="$2" kind="$3" default="$4" help="$5" alias="${6:-}"
  _OPT_ORDER+=("$name")
  _OPT_VAR[$name]="$var"
  _OPT_KIND[$name]="$kind"
  _OPT_HELP[$name]="$help"
  _OPT_ALIAS[$name]="$alias"
  if [[ -z "${!var:-}" && -n "$alias" && -n "${!alias:-}" ]]; then
    printf -v "$var" '%s' "${!alias}"
  fi
  if [[ -z "${!var:-}" ]]; then
    printf -v "$var" '%s' "$default"
  fi
}

# The flags every script takes.
common_opts() {
  opt name TPU_NAME value "" "TPU VM (or queued resource) name"
  opt zone ZONE value "" "zone, e.g. us-central2-b (v4 TPU Research Cloud quota lives there)" TPU_ZONE
  opt project PROJECT value "" "Google Cloud project (default: gcloud's configured one)" TPU_PROJECT
  opt dry-run DRY_RUN bool 0 "print every command this would run, in order, and run none"
}

usage() {
  printf '%s\n\nFlags (each also read from the environment variable shown):\n' "$_USAGE"
  local name
  for name in "${_OPT_ORDER[@]}"; do
    local arg=" VALUE"
    [[ "${_OPT_KIND[$name]}" == bool ]] && arg=""
    local var="${_OPT_VAR[$name]}"
    [[ -z "${_OPT_ALIAS[$name]}" ]] || var+=" (${_OPT_ALIAS[$name]})"
    printf '  --%-22s %-24s %s\n' "$name$arg" "$var" "${_OPT_HELP[$name]}"
  done
  printf '  --%-22s %-24s %s\n' "help" "" "this text"
}

die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

# parse_args "$@": sets the variables of the declared flags; arguments after `--` go to EXTRA_ARGS.
parse_args() {
  _parse_flags "$@"
  local name var
  for name in "${_OPT_ORDER[@]}"; do
    var="${_OPT_VAR[$name]}"
    if [[ "${_OPT_KIND[$name]}" == bool && "${!var}" != 0 && "${!var}" != 1 ]]; then
      die "$var=${!var}: expected 0 or 1 (or the flag --$name)"
    fi
  done
}

_parse_flags() {
  while (($#)); do
    local arg="$1" value="" has_value=0
    shift
    case "$arg" in
    -h | --help)
      usage
      exit 0
      ;;
    --)
      EXTRA_ARGS=("$@")
      return 0
      ;;
    --*=*)
      value="${arg#*=}"
      arg="${arg%%=*}"
      has_value=1
      ;;
    --*) ;;
    *) die "unexpected argument '$arg' (extra arguments for the stage go after '--'; see --help)" ;;
    esac
    local name="${arg#--}"
    name="${name//_/-}"
    [[ -n "${_OPT_VAR[$name]:-}" ]] || die "unknown flag '$arg' (see --help)"
    local var="${_OPT_VAR[$name]}"
    if [[ "${_OPT_KIND[$name]}" == bool ]]; then
      ((has_value)) && die "$arg takes no value"
      printf -v "$var" '%s' 1
    else
      if ((!has_value)); then
        (($#)) || die "$arg needs a value"
        value="$1"
        shift
      fi
      printf -v "$var" '%s' "$value"
    fi
  done
}

# require NAME...: fail at once, naming the flag and its variable, when a required setting is empty.
require() {
  local name missing=()
  for name in "$@"; do
    local var="${_OPT_VAR[$name]}"
    [[ -n "${!var:-}" ]] || missing+=("--$name ($var)")
  done
  ((${#missing[@]} == 0)) || die "missing required setting(s): ${missing[*]}"
}

# squote WORD: WORD quoted for a shell, readably (bare when safe, else in single quotes when possible).
squote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
  fi
}

# run CMD ARGS...: print the command (shell-quoted, '+ ' first) and run it unless --dry-run.
run() {
  local line="" word
  for word in "$@"; do
    line+="$(squote "$word") "
  done
  printf '+ %s\n' "${line% }"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# The gcloud flags naming the TPU (zone, optional project).
tpu_flags() {
  printf '%s\n' "--zone=$ZONE"
  [[ -z "$PROJECT" ]] || printf '%s\n' "--project=$PROJECT"
}

# ssh_workers WORKER COMMAND [GCLOUD FLAGS...]: run a shell command on one worker or on all of them at once.
ssh_workers() {
  local worker="$1" command="$2"
  shift 2
  local flags
  mapfile -t flags < <(tpu_flags)
  # keep-alives: a preempted worker drops the connection within minutes instead of hanging the stage
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" "--worker=$worker" "$@" \
    --ssh-flag=-oServerAliveInterval=60 --ssh-flag=-oServerAliveCountMax=5 --command="$command"
}

# tpu_state: the TPU VM's state (READY, PREEMPTED, CREATING, ...), or NOT_FOUND when describe fails.
# Under --dry-run it prints the command and answers READY.
tpu_state() {
  local flags state
  mapfile -t flags < <(tpu_flags)
  if ((DRY_RUN)); then
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${flags[@]}" --format='value(state)' >&2
    echo READY
    return 0
  fi
  state="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${flags[@]}" --format='value(state)' 2>/dev/null)" ||
    state=NOT_FOUND
  echo "${state:-NOT_FOUND}"
}

# expected_devices ACCELERATOR: JAX devices of a slice. v4 and v5p count chips (2 cores each, the
# accelerator type counts cores); v2/v3 count cores; v5e (v5litepod) and v6e count chips.
expected_devices() {
  local accel="$1" n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "--accelerator-type '$accel': expected e.g. v4-8, v4-32"
  case "$accel" in
  v4-* | v5p-*) echo $((n / 2)) ;;
  v2-* | v3-* | v5litepod-* | v5e-* | v6e-*) echo "$n" ;;
  *) die "--accelerator-type '$accel': unknown TPU generation (give --expected-devices)" ;;
  esac
}

# remote_quote ARG: ARG shell-quoted for the worker's shell; a gs://BUCKET/path becomes the path under the
# worker's gcsfuse mount of the bucket (setup.sh --bucket): the package reads and writes local paths.
# Every gs:// in the word is rewritten: '+'-joined dataset lists and --flag=gs://... forms too.
remote_quote() {
  local rest="$1" out="" head
  head="${rest%%gs://*}"
  if [[ -n "$head" || "$rest" != *gs://* ]]; then
    out="$(squote "$head")"
  fi
  while [[ "$rest" == *gs://* ]]; do
    rest="${rest#*gs://}"
    out+="$REMOTE_MOUNT_ROOT/$(squote "${rest%%gs://*}")"
  done
  printf '%s' "$out"
}

# remote_command WORDS...: one command line for the worker's shell (see remote_quote).
remote_command() {
  local out="" word
  for word in "$@"; do
    out+="$(remote_quote "$word") "
  done
  printf '%s' "${out% }"
}

# Where setup.sh puts the project on every worker and mounts buckets. Inserted unquoted into the remote
# command, so $HOME expands on the worker (no spaces).
REMOTE_VENV="${REMOTE_VENV:-\$HOME/distil-whisper-venv}"
REMOTE_MOUNT_ROOT="${REMOTE_MOUNT_ROOT:-\$HOME/gcs}"

# stage_opts: the flags of a stage script (label/distill/eval/export).
stage_opts() {
  common_opts
  opt output-dir OUTPUT_DIR value "" "the stage's --output_dir on the workers: a gs://BUCKET/path (mounted by setup.sh --bucket) or a worker path"
  opt config STAGE_CONFIG value "" "a local --config FILE (YAML/JSON, e.g. a recipe) copied to every worker"
  opt log-dir LOG_DIR value ./tpu_logs "local directory of the per-worker logs (LOG_DIR/<stage>/<worker>.log)"
}

# stage_main STAGE CONSOLE_SCRIPT WORKER MULTI_HOST: run a console script of the package on the workers,
# with --jax_distributed when MULTI_HOST=1, --output_dir, the copied --config and the arguments after --.
stage_main() {
  local stage="$1" script="$2" worker="$3" multi="$4"
  require name zone output-dir
  local args=()
  ((multi)) && args+=(--jax_distributed)
  args+=(--output_dir "$OUTPUT_DIR")
  if [[ -n "$STAGE_CONFIG" ]]; then
    [[ -f "$STAGE_CONFIG" ]] || die "--config $STAGE_CONFIG (STAGE_CONFIG): no such file"
    local remote_config flags
    remote_config="tpu_configs/$stage-$(basename "$STAGE_CONFIG")"
    mapfile -t flags < <(tpu_flags)
    ssh_workers "$worker" "mkdir -p tpu_configs"
    run gcloud compute tpus tpu-vm scp "$STAGE_CONFIG" "$TPU_NAME:$remote_config" "${flags[@]}" "--worker=$worker"
    args+=(--config "$remote_config")
  fi
  args+=("${EXTRA_ARGS[@]}")
  run mkdir -p "$LOG_DIR/$stage"
  echo "$stage: per-worker logs in $LOG_DIR/$stage/<worker>.log" >&2
  # A one-worker stage (create-student, export) runs on the CPU: on a multi-host slice, a TPU program on one
  # host alone would wait for the others to join.
  local env_prefix=""
  ((multi)) || env_prefix="JAX_PLATFORMS=cpu "
  ssh_workers "$worker" "$env_prefix$REMOTE_VENV/bin/$script $(remote_command "${args[@]}")" \
    "--output-directory=$LOG_DIR/$stage"
}
