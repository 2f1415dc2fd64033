#!/usr/bin/env bash
# The first command to run on a new slice (run.sh runs it before its first stage). On every worker at once it
# checks the Python and the installed package, jax and libtpu versions, that JAX starts and every host sees the
# whole slice (through jax.distributed on a pod), the free disk, writing/reading/deleting an object in the bucket,
# and a short distillation of a 2-layer tiny.en student on the bundled speech that checkpoints every step to the
# bucket, is stopped by SIGTERM (what a preemption sends) after its first checkpoint and resumed from the bucket
# to the end. Locally it checks the ssh agent a slice of several hosts needs. Prints one table (pass/fail and the
# fix per row) and exits 1 when any row failed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: preflight.sh --name TPU --zone ZONE [--bucket gs://B/prefix] [--skip-resume]"
common_opts
opt accelerator-type ACCELERATOR_TYPE value "" "slice type (default: what gcloud describes)" TPU_ACCELERATOR
opt expected-devices EXPECTED_DEVICES value "" "override the expected jax.device_count()"
opt bucket PREFLIGHT_BUCKET value "" "gs://BUCKET/prefix to test writes and the checkpoint/resume in (objects are removed after)"
opt skip-resume SKIP_RESUME bool 0 "skip the distillation (the quick checks only)"
opt min-free-gb MIN_FREE_GB value 20 "free disk each worker needs in its home directory"
opt log-dir LOG_DIR value ./tpu_logs "local directory of the per-worker logs (LOG_DIR/preflight/<worker>.log)"
parse_args "$@"
require name zone
accel="$(slice_accelerator)"
hosts="$(slice_hosts "$accel")"
[[ -n "$EXPECTED_DEVICES" ]] || EXPECTED_DEVICES="$(expected_devices "$accel")"
rows=()
# row CHECK WORKER PASS|FAIL DETAIL FIX
row() { rows+=("$(printf '%s\t%s\t%s\t%s\t%s' "$@")"); }
# table: tab-separated lines as aligned columns (awk: no dependency on util-linux's column)
table() {
  awk -F'\t' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } if (NF > n) n = NF }
    END { for (r = 1; r <= NR; r++) { line = ""; for (i = 1; i < n; i++) line = line sprintf("%-" w[i] "s  ", c[r, i])
      print line c[r, n] } }'
}

if ((hosts > 1)); then
  if ((DRY_RUN)); then
    printf '+ ssh-add -l\n'
  else
    problem="$(ssh_agent_problem "$hosts")"
    if [[ -z "$problem" ]]; then row "ssh agent" local PASS "gcloud's key is in the agent ($hosts workers)" ""; else
      row "ssh agent" local FAIL "$problem" "see the detail"
      printf '%s\n' "${rows[@]}" | table >&2
      die "fix the ssh agent first: without it the next command would stall"
    fi
  fi
fi
_AGENT_CHECKED=1

run_id="preflight-$(date -u +%Y%m%dT%H%M%SZ)"
checks=(-m distil_whisper_jax.preflight --expected_devices "$EXPECTED_DEVICES" --min_free_gb "$MIN_FREE_GB"
  --run_id "$run_id")
((hosts > 1)) && checks+=(--jax_distributed)
[[ -z "$PREFLIGHT_BUCKET" ]] || checks+=(--bucket "$PREFLIGHT_BUCKET")
((SKIP_RESUME)) && checks+=(--skip_resume)
no_venv="printf 'PREFLIGHT\\tpython\\tFAIL\\t%s\\t%s\\n' \"\$(hostname): no venv at $REMOTE_VENV (python3 is \$(python3 -V 2>&1))\" 'run tpu_scripts/setup.sh'"
out="$LOG_DIR/preflight"
run rm -rf "$out"
run mkdir -p "$out"
status=0
# A stage left running by an earlier run would hold the TPU: stopped first, as before every stage.
ssh_workers all "$(remote_cleanup)if [ -x $REMOTE_VENV/bin/python ]; then $REMOTE_VENV/bin/python \
$(remote_command "${checks[@]}"); else $no_venv; exit 1; fi" "--output-directory=$out" || status=$?
((DRY_RUN)) && exit 0

for w in $(seq 0 $((hosts - 1))); do
  log="$out/$w.log" # gcloud's name for worker w's output
  if [[ ! -f "$log" ]]; then
    row "worker reached" "$w" FAIL "no output from worker $w (ssh failed?)" "is the slice READY? gcloud compute tpus tpu-vm describe $TPU_NAME"
    status=1
    continue
  fi
  found=0
  while IFS=$'\t' read -r tag check result detail fix; do
    [[ "$tag" == PREFLIGHT ]] || continue
    row "$check" "$w" "$result" "$detail" "$fix"
    found=1
  done <"$log"
  ((found)) || row "worker reached" "$w" FAIL "worker $w printed no checks (see $log)" "see $log"
done
{
  printf 'check\tworker\tresult\tdetail\tfix\n'
  printf '%s\n' "${rows[@]}"
} | table
if ((status)) || printf '%s\n' "${rows[@]}" | grep -q $'\tFAIL\t'; then
  die "preflight failed on $TPU_NAME: fix the FAIL rows (last column) before starting a run"
fi
if [[ -n "$PREFLIGHT_BUCKET" ]] && ((!SKIP_RESUME)); then # one worker removes what the checks wrote, after all passed
  ssh_workers 0 "JAX_PLATFORMS=cpu $REMOTE_VENV/bin/python -m distil_whisper_jax.preflight --remove \
$(squote "${PREFLIGHT_BUCKET%/}/$run_id")" >/dev/null || echo "preflight: could not remove ${PREFLIGHT_BUCKET%/}/$run_id" >&2
fi
echo "preflight: $TPU_NAME passed every check on $hosts worker(s)" >&2
