#!/usr/bin/env bash
# Create the TPU VM slice (or, with --queued, a queued resource that provisions it when capacity frees up)
# and wait until it is READY. The runtime version defaults to the one Google documents for the slice's
# generation (v2/v3/v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e).
# A queued resource that already exists and is still queued keeps its place: it is waited for, not re-created.
# Exit status: 0 READY; 2 bad settings; 3 no capacity now (gcloud refused for capacity, or the queued resource
# FAILED / was SUSPENDED): try again later; 1 anything else.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: create.sh --name TPU --zone ZONE --accelerator-type v4-8 [--version RUNTIME] [--spot|--preemptible] [--queued]"
common_opts
slice_opts
opt wait-timeout TPU_WAIT_TIMEOUT value "" "seconds to wait for READY (default 3600; with --queued no limit: a queued resource waits for capacity)"
opt poll-interval TPU_POLL_INTERVAL value 30 "seconds between state checks"
parse_args "$@"
require name zone accelerator-type
tpu_generation "$ACCELERATOR_TYPE" >/dev/null # an unknown slice type fails here, before gcloud
[[ -n "$RUNTIME_VERSION" ]] || RUNTIME_VERSION="$(default_runtime "$ACCELERATOR_TYPE")"
: "${TPU_WAIT_TIMEOUT:=$((TPU_QUEUED ? 0 : 3600))}"
[[ "$TPU_WAIT_TIMEOUT" =~ ^[0-9]+$ ]] || die "--wait-timeout '$TPU_WAIT_TIMEOUT' (TPU_WAIT_TIMEOUT): expected seconds"
[[ "$TPU_POLL_INTERVAL" =~ ^[0-9]+$ ]] || die "--poll-interval '$TPU_POLL_INTERVAL' (TPU_POLL_INTERVAL): expected seconds"
((TPU_SPOT && TPU_PREEMPTIBLE)) && die "--spot and --preemptible exclude each other"
((TPU_QUEUED && TPU_PREEMPTIBLE)) && die "--queued takes --spot, not --preemptible"
mapfile -t flags < <(tpu_flags)
capacity=()
((TPU_SPOT)) && capacity+=(--spot)
((TPU_PREEMPTIBLE)) && capacity+=(--preemptible)

# create_or_exit3 GCLOUD ARGS...: run the create command; a refusal for capacity exits 3 (run.sh waits and retries
# without spending its retries), any other failure exits 1.
create_or_exit3() {
  local err
  err="$(mktemp)"
  if run "$@" 2> >(tee "$err" >&2); then
    rm -f "$err"
    return 0
  fi
  sleep 1 # let tee finish writing
  if grep -qiE 'quota' "$err"; then
    rm -f "$err"
    die "the project's TPU quota for $ACCELERATOR_TYPE in $ZONE is used up or missing (waiting will not help):" \
      "request quota (IAM & Admin > Quotas) or choose another zone or slice"
  fi
  if grep -qiE 'RESOURCE_EXHAUSTED|no more capacity|insufficient capacity|"code": 8' "$err"; then
    rm -f "$err"
    echo "create.sh: no capacity for $ACCELERATOR_TYPE in $ZONE now; try again later (or --queued to wait in line)" >&2
    exit 3
  fi
  rm -f "$err"
  exit 1
}

if ((TPU_QUEUED)); then
  state="$(queued_state)"
  # ACTIVE with its node preempted or gone: its capacity is gone too, whatever the queued resource still says
  [[ "$state" == ACTIVE && "$(tpu_state)" =~ ^(PREEMPTED|TERMINATED|NOT_FOUND)$ ]] && state=SUSPENDED
  case "$state" in
  FAILED | SUSPENDED)
    echo "create.sh: queued resource $TPU_NAME is $state; deleting it and queueing again" >&2
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${flags[@]}" --force --quiet
    state=NOT_FOUND
    ;;
  NOT_FOUND) ;;
  *) echo "create.sh: queued resource $TPU_NAME exists ($state): keeping its place in the queue" >&2 ;;
  esac
  if [[ "$state" == NOT_FOUND ]]; then
    create_or_exit3 gcloud compute tpus queued-resources create "$TPU_NAME" "${flags[@]}" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${capacity[@]}"
  fi
else
  create_or_exit3 gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${capacity[@]}"
fi

if ((DRY_RUN)); then
  tpu_state >/dev/null
  exit 0
fi
waited=0
while :; do
  if ((TPU_QUEUED)); then
    qstate="$(queued_state)"
    case "$qstate" in
    FAILED | SUSPENDED | SUSPENDING | DELETING | NOT_FOUND)
      echo "create.sh: queued resource $TPU_NAME is $qstate (its capacity is gone); queue again later" >&2
      exit 3
      ;;
    esac
    if [[ "$qstate" == ACTIVE ]]; then
      node="$(tpu_state)"
      [[ "$node" == READY ]] && break
      if [[ "$node" == PREEMPTED || "$node" == TERMINATED ]]; then
        echo "create.sh: queued resource $TPU_NAME is ACTIVE but its slice is $node; queue again later" >&2
        exit 3
      fi
    fi
    echo "create.sh: queued resource $TPU_NAME is $qstate after ${waited}s" >&2
  else
    state="$(tpu_state)"
    [[ "$state" == READY ]] && break
    case "$state" in
    PREEMPTED | TERMINATED | NOT_FOUND) die "$TPU_NAME became $state while waiting for READY" ;;
    esac
  fi
  ((TPU_WAIT_TIMEOUT == 0 || waited < TPU_WAIT_TIMEOUT)) ||
    die "$TPU_NAME is not READY after ${TPU_WAIT_TIMEOUT}s (gcloud compute tpus tpu-vm describe)"
  run sleep "$TPU_POLL_INTERVAL" >/dev/null
  waited=$((waited + TPU_POLL_INTERVAL))
done
echo "$TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) is READY" >&2
