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

# slice_opts: the flags that say what slice to create (create.sh, and run.sh, which passes them on).
slice_opts() {
  opt accelerator-type ACCELERATOR_TYPE value v4-8 "slice type: v4-8 (4 chips), v4-32 (16 chips), v5litepod-16, v5p-8, v6e-8, ..." TPU_ACCELERATOR
  opt version RUNTIME_VERSION value "" "TPU VM runtime (software) version (default: the generation's: tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e)" TPU_RUNTIME
  opt spot TPU_SPOT bool 0 "spot capacity (cheaper, may be preempted at any time, no run-time limit: the choice for a recipe of days)"
  opt preemptible TPU_PREEMPTIBLE bool 0 "preemptible capacity (the older form of --spot; ends after 24 hours: run.sh refuses it for a longer recipe)"
  opt queued TPU_QUEUED bool 0 "a queued resource (gcloud compute tpus queued-resources): waits in line for capacity"
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

# ssh_workers WORKER COMMAND [GCLOUD FLAGS...]: run a shell command on one worker or on all of them at once
# (after checking, on a slice of several hosts, that gcloud's key is in the ssh agent). gcloud itself re-runs a
# command whose ssh exits 255 (a dropped connection), which is why stages start with remote_cleanup.
ssh_workers() {
  local worker="$1" command="$2"
  shift 2
  local flags
  mapfile -t flags < <(tpu_flags)
  [[ "$worker" != all ]] || check_ssh_agent
  # keep-alives: a preempted worker drops the connection within minutes instead of hanging the stage
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" "--worker=$worker" "$@" \
    --ssh-flag=-oServerAliveInterval=60 --ssh-flag=-oServerAliveCountMax=5 --command="$command"
}

# describe_state KIND FIELD DRY_ANSWER: gcloud's describe of the slice (KIND tpu-vm) or its queued resource (KIND
# queued-resources), the value of FIELD; NOT_FOUND when gcloud says so, UNKNOWN when describe failed otherwise (a
# network or quota hiccup: never a reason to delete anything). Under --dry-run it prints the command and answers
# DRY_ANSWER.
describe_state() {
  local flags state err
  mapfile -t flags < <(tpu_flags)
  if ((DRY_RUN)); then
    run gcloud compute tpus "$1" describe "$TPU_NAME" "${flags[@]}" --format="value($2)" >&2
    echo "$3"
    return 0
  fi
  err="$(mktemp)"
  if ! state="$(gcloud compute tpus "$1" describe "$TPU_NAME" "${flags[@]}" --format="value($2)" 2>"$err")"; then
    state=UNKNOWN
    grep -q NOT_FOUND "$err" && state=NOT_FOUND
  fi
  rm -f "$err"
  echo "${state:-UNKNOWN}"
}

# tpu_state: the TPU VM's state (READY, PREEMPTED, CREATING, ...), or NOT_FOUND; READY under --dry-run.
tpu_state() {
  describe_state tpu-vm state READY
}

# queued_state: the queued resource's state (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ...),
# or NOT_FOUND; NOT_FOUND under --dry-run.
queued_state() {
  describe_state queued-resources state.state NOT_FOUND
}

# apt-get waits for the dpkg lock, which unattended-upgrades holds on a fresh VM's first boot (apt >= 1.9).
APT_WAIT="-o DPkg::Lock::Timeout=600"

# The Pythons the package supports (pyproject.toml's requires-python; a test keeps the two equal).
PYTHON_MIN=3.11
PYTHON_BELOW=3.13

# remote_python PYTHON: a worker-side command that sets $py to a supported Python: PYTHON when it is one, else
# an installed python3.12 / python3.11, else python3.11 + python3.11-venv from the image's apt sources (Ubuntu
# 22.04's universe; the default v4 image, tpu-ubuntu2204-base, ships 3.10). Exits 3 naming the fix when none
# can be installed.
remote_python() {
  local lo="${PYTHON_MIN#*.}" hi="${PYTHON_BELOW#*.}" ok
  ok="import sys; sys.exit(not ((3, $lo) <= sys.version_info[:2] < (3, $hi)))"
  printf '%s' "py=''; for c in $1 python3.12 python3.11; do command -v \$c >/dev/null && \$c -c '$ok' 2>/dev/null && { py=\$c; break; }; done; "
  printf '%s' "if [ -z \"\$py\" ]; then echo \"\$(hostname): $1 is \$($1 -V 2>&1); installing python3.11 (the package needs >= $PYTHON_MIN, < $PYTHON_BELOW)\"; "
  printf '%s' "sudo apt-get $APT_WAIT update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get $APT_WAIT install -y -qq python3.11 python3.11-venv >/dev/null && py=python3.11 || "
  printf '%s' "{ echo \"\$(hostname): could not install python3.11 with apt-get; install a Python >= $PYTHON_MIN, < $PYTHON_BELOW with its venv module and pass setup.sh --python PATH\" >&2; exit 3; }; fi; "
  printf '%s' "echo \"\$(hostname): using \$(command -v \$py) (\$(\$py -V 2>&1))\"; "
}

# tpu_generation ACCELERATOR: v2, v3, v4, v5e, v5p or v6e for a slice type such as v4-32 or v5litepod-16.
tpu_generation() {
  local accel="$1" n="${1##*-}"
  [[ "$accel" == *-* && "$n" =~ ^[0-9]+$ ]] || die "--accelerator-type '$accel': expected e.g. v4-8, v4-32, v5litepod-16, v6e-8"
  case "${accel%-*}" in
  v2 | v3 | v4 | v5p | v6e) echo "${accel%-*}" ;;
  v5litepod | v5e) echo v5e ;;
  *) die "--accelerator-type '$accel': unknown TPU generation (v2, v3, v4, v5p, v5litepod/v5e, v6e; or give --expected-devices)" ;;
  esac
}

# expected_devices ACCELERATOR: JAX devices of a slice. The number in a v2/v3/v4/v5p type counts TensorCores;
# v4 and v5p show one JAX device per chip (2 cores), v2/v3 one per core; v5e and v6e types count chips.
expected_devices() {
  local gen n="${1##*-}"
  gen="$(tpu_generation "$1")" || exit 2
  case "$gen" in
  v4 | v5p) echo $((n / 2)) ;;
  *) echo "$n" ;;
  esac
}

# slice_hosts ACCELERATOR: TPU VM workers of a slice: 4 chips a host (v4, v5p; v5e and v6e beyond 8 chips),
# 8 cores a host (v2, v3); up to 8 v5e/v6e chips are one host.
slice_hosts() {
  local gen n="${1##*-}" hosts
  gen="$(tpu_generation "$1")" || exit 2
  case "$gen" in
  v2 | v3) hosts=$((n / 8)) ;;
  v4 | v5p) hosts=$((n / 8)) ;;
  v5e | v6e) hosts=$((n <= 8 ? 1 : n / 4)) ;;
  esac
  echo $((hosts < 1 ? 1 : hosts))
}

# default_runtime ACCELERATOR: the TPU VM software version Google documents for the generation.
default_runtime() {
  local gen
  gen="$(tpu_generation "$1")" || exit 2
  case "$gen" in
  v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
  v5e) echo v2-alpha-tpuv5-lite ;;
  v5p) echo v2-alpha-tpuv5 ;;
  v6e) echo v2-alpha-tpuv6e ;;
  esac
}

# chip_tflops ACCELERATOR: peak dense bf16 TFLOP/s of one chip, to scale a recipe's v4 chip-hours to a slice.
chip_tflops() {
  local gen
  gen="$(tpu_generation "$1")" || exit 2
  case "$gen" in
  v2) echo 45 ;;
  v3) echo 123 ;;
  v4) echo 275 ;;
  v5e) echo 197 ;;
  v5p) echo 459 ;;
  v6e) echo 918 ;;
  esac
}

# slice_chips ACCELERATOR: chips of a slice (2 cores a chip where the type counts cores).
slice_chips() {
  local n="${1##*-}"
  local gen
  gen="$(tpu_generation "$1")" || exit 2
  case "$gen" in
  v5e | v6e) echo "$n" ;;
  *) echo $((n / 2 < 1 ? 1 : n / 2)) ;;
  esac
}

# slice_accelerator: the slice's type as gcloud describes it (falls back to ACCELERATOR_TYPE, e.g. for a slice
# created with --type/--topology, which describe reports elsewhere, and under --dry-run).
slice_accelerator() {
  local accel
  accel="$(describe_state tpu-vm acceleratorType "")"
  [[ "$accel" =~ ^v[0-9] ]] || accel="${ACCELERATOR_TYPE:-v4-8}"
  echo "$accel"
}

# ssh_agent_problem HOSTS: empty when gcloud can reach all HOSTS workers of the slice at once, else what is wrong
# and the fix.
# `gcloud ... ssh --worker=all` on a slice of several hosts goes through the user's ssh agent; without gcloud's key
# in it, every worker's ssh waits for a passphrase nobody sees and the call stalls.
ssh_agent_problem() {
  local hosts="$1" key="${GCLOUD_SSH_KEY:-$HOME/.ssh/google_compute_engine}" fix listed fingerprint=""
  ((hosts > 1)) || return 0
  fix="eval \"\$(ssh-agent -s)\" && ssh-add $key"
  # a key without a passphrase is used as it is; only one with a passphrase needs the agent
  if [[ -f "$key" ]] && ssh-keygen -y -P '' -f "$key" >/dev/null 2>&1; then
    return 0
  elif [[ ! -f "$key" ]]; then
    echo "$TPU_NAME has $hosts workers and gcloud's ssh key $key does not exist yet: create it with one single-worker" \
      "ssh (gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command=true), then: $fix"
  elif ! listed="$(ssh-add -l 2>/dev/null)"; then
    echo "$TPU_NAME has $hosts workers: gcloud's ssh to all of them at once needs your key (it has a passphrase) in an" \
      "ssh agent, or it stalls asking every worker for it (ssh-add -l: no agent, or no keys in it). Fix: $fix"
  else
    [[ -f "$key.pub" ]] && fingerprint="$(ssh-keygen -lf "$key.pub" 2>/dev/null | awk '{print $2}')"
    [[ -z "$fingerprint" || "$listed" == *"$fingerprint"* ]] ||
      echo "$TPU_NAME has $hosts workers: the ssh agent does not hold gcloud's key $key. Fix: ssh-add $key"
  fi
}

# check_ssh_agent: ssh_agent_problem, checked once per script before the first call to all workers; fails with it.
check_ssh_agent() {
  [[ -z "${_AGENT_CHECKED:-}" ]] || return 0
  _AGENT_CHECKED=1
  local hosts problem
  hosts="$(slice_hosts "$(slice_accelerator)")"
  ((hosts > 1)) || return 0
  printf '+ ssh-add -l  # %s has %s workers: --worker=all needs gcloud'"'"'s key in an ssh agent\n' "$TPU_NAME" "$hosts"
  ((DRY_RUN)) && return 0
  problem="$(ssh_agent_problem "$hosts")"
  [[ -z "$problem" ]] || die "$problem"
}

# remote_command WORDS...: one command line for the worker's shell, each word quoted. Bucket URLs (gs://...) pass
# through unchanged: the package reads and writes them itself (never through a gcsfuse mount, which cannot rename
# directories).
remote_command() {
  local out="" word
  for word in "$@"; do
    out+="$(squote "$word") "
  done
  printf '%s' "${out% }"
}

# Where setup.sh puts the project on every worker, and where an optional gcsfuse mount goes (setup.sh
# --mount-bucket). Inserted unquoted into the remote command, so $HOME expands on the worker (no spaces).
REMOTE_VENV="${REMOTE_VENV:-\$HOME/distil-whisper-venv}"
REMOTE_MOUNT_ROOT="${REMOTE_MOUNT_ROOT:-\$HOME/gcs}"

# remote_cleanup: the worker-side prefix of every stage. It stops the stage process a previous run left behind
# (its pid is in ~/.distil-whisper-jax/stage.pid: SIGTERM, so a distillation checkpoints, then SIGKILL after
# 120 s), removes libtpu's lock file (only one process may hold the TPU), then records its own pid and becomes
# the stage (exec). A re-run after a failure, or gcloud re-running an ssh that exited 255 while the first copy
# still runs, so never collides with the first copy.
# shellcheck disable=SC2016 # single-quoted: these expand on the worker
remote_cleanup() {
  printf '%s' 'd="$HOME/.distil-whisper-jax"; mkdir -p "$d"; old="$(cat "$d/stage.pid" 2>/dev/null || true)"; '
  printf '%s' 'if [ -n "$old" ] && grep -qs distil-whisper "/proc/$old/cmdline"; then '
  printf '%s' 'echo "stopping the leftover stage process $old"; kill -TERM "$old" 2>/dev/null || true; '
  printf '%s' 'for _ in $(seq 120); do kill -0 "$old" 2>/dev/null && ! grep -qs "^State:.*Z" "/proc/$old/status" || break; sleep 1; done; '
  printf '%s' 'kill -KILL "$old" 2>/dev/null || true; fi; rm -f "${TMPDIR:-/tmp}/libtpu_lockfile"; echo $$ > "$d/stage.pid"; '
}

# bucket_args WORDS...: the gs:// URLs among a stage's arguments, one a line, "w URL" for the value of
# --output_dir and --compilation_cache_dir (written, need not exist yet) and "r URL" for every other (a '+'-joined
# dataset list gives one line a URL; --flag=URL too).
bucket_args() {
  local prev="" word part
  for word in "$@"; do
    local value="$word" flag="$prev"
    if [[ "$word" == --*=* ]]; then
      flag="${word%%=*}" value="${word#*=}"
    fi
    IFS=+ read -r -a parts <<<"$value"
    for part in "${parts[@]}"; do
      [[ "$part" == gs://* ]] || continue
      case "$flag" in
      --output_dir | --output-dir | --compilation_cache_dir) echo "w $part" ;;
      *) echo "r $part" ;;
      esac
    done
    prev="$word"
  done
}

# check_buckets WORKER WORDS...: before a stage starts, every worker that runs it must reach each bucket URL among
# its arguments: write, read back and delete an object under the output, find each input. Fails naming the URL
# (so a stage never begins hours of work whose outputs cannot be saved, or lands them on a worker's disk).
check_buckets() {
  local worker="$1" kind url writes=() reads=()
  shift
  while read -r kind url; do
    [[ -n "$kind" ]] || continue
    if [[ "$kind" == w ]]; then writes+=("$url"); else reads+=("$url"); fi
  done < <(bucket_args "$@")
  ((${#writes[@]} + ${#reads[@]})) || return 0
  local probe=(-m distil_whisper_jax.preflight)
  ((${#writes[@]})) && probe+=(--write "${writes[@]}")
  ((${#reads[@]})) && probe+=(--read "${reads[@]}")
  # the venv path stays unquoted: its $HOME expands on the worker
  ssh_workers "$worker" "JAX_PLATFORMS=cpu $REMOTE_VENV/bin/python $(remote_command "${probe[@]}")" ||
    die "a worker of $TPU_NAME cannot use ${writes[*]} ${reads[*]}, or could not be reached (FAIL rows above name" \
      "the URL and the fix; no rows: the ssh itself failed)"
}

# stage_opts: the flags of a stage script (student/label/distill/eval/export).
stage_opts() {
  common_opts
  opt output-dir OUTPUT_DIR value "" "the stage's --output_dir: a gs://BUCKET/path (written directly, never through a mount) or a worker path"
  opt config STAGE_CONFIG value "" "a local --config FILE (YAML/JSON, e.g. a recipe) copied to every worker"
  opt log-dir LOG_DIR value ./tpu_logs "local directory of the per-worker logs (LOG_DIR/<stage>/<time>/<worker>.log)"
  opt skip-bucket-check SKIP_BUCKET_CHECK bool 0 "do not check the stage's gs:// URLs from the workers first"
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
  ((SKIP_BUCKET_CHECK)) || check_buckets "$worker" "${args[@]}"
  local logs
  logs="$LOG_DIR/$stage/$(date -u +%Y%m%dT%H%M%SZ)" # one directory per run: a retry keeps the failed run's logs
  run mkdir -p "$logs"
  echo "$stage: per-worker logs in $logs/<worker>.log" >&2
  # A one-worker stage (create-student, export) runs on the CPU: on a multi-host slice, a TPU program on one
  # host alone would wait for the others to join.
  local env_prefix=""
  ((multi)) || env_prefix="JAX_PLATFORMS=cpu "
  ssh_workers "$worker" "$(remote_cleanup)${env_prefix}exec $REMOTE_VENV/bin/$script $(remote_command "${args[@]}")" \
    "--output-directory=$logs"
}
