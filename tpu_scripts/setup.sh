#!/usr/bin/env bash
# On every worker: install this project with the `tpu` extra into a venv (from a git ref or a wheel),
# optionally mount a gs:// bucket with gcsfuse for the stages' inputs and outputs, then check that every
# host sees the whole slice (jax.device_count() == the slice's devices), failing otherwise.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: setup.sh --name TPU --zone ZONE --accelerator-type v4-8 (--git-url URL [--git-ref REF] | --wheel FILE|URL) [--bucket B]"
common_opts
opt accelerator-type ACCELERATOR_TYPE value v4-8 "slice type (sets the expected device count: v4-8 → 4, v4-32 → 16)" TPU_ACCELERATOR
opt expected-devices EXPECTED_DEVICES value "" "override the expected jax.device_count()"
opt git-url GIT_URL value "" "git repository of this project to install from"
opt git-ref GIT_REF value main "branch, tag or commit of --git-url"
opt wheel WHEEL value "" "instead of git: a local wheel file (copied to the workers), an https:// or gs:// URL"
opt bucket BUCKET value "" "gs:// bucket to mount on every worker at $REMOTE_MOUNT_ROOT/BUCKET (gcsfuse)"
opt python REMOTE_PYTHON value python3 "the workers' python used to create the venv"
parse_args "$@"
require name zone
[[ -n "$GIT_URL" || -n "$WHEEL" ]] || die "missing required setting: --git-url (GIT_URL) or --wheel (WHEEL)"
[[ -n "$GIT_URL" && -n "$WHEEL" ]] && die "give --git-url (GIT_URL) or --wheel (WHEEL), not both"
if [[ -z "$EXPECTED_DEVICES" ]]; then
  require accelerator-type
  EXPECTED_DEVICES="$(expected_devices "$ACCELERATOR_TYPE")"
fi
mapfile -t flags < <(tpu_flags)

if [[ -n "$GIT_URL" ]]; then
  spec="distil-whisper-jax[tpu] @ git+$GIT_URL@$GIT_REF"
elif [[ "$WHEEL" == http://* || "$WHEEL" == https://* ]]; then
  spec="distil-whisper-jax[tpu] @ $WHEEL"
elif [[ "$WHEEL" == gs://* ]]; then
  ssh_workers all "gcloud storage cp $(squote "$WHEEL") ."
  spec="./$(basename "$WHEEL")[tpu]"
else
  [[ -f "$WHEEL" ]] || die "--wheel $WHEEL (WHEEL): no such file"
  run gcloud compute tpus tpu-vm scp "$WHEEL" "$TPU_NAME:" "${flags[@]}" --worker=all
  spec="./$(basename "$WHEEL")[tpu]"
fi
# python3-venv is not on every TPU VM image: installed when creating the venv fails
ssh_workers all "set -e; [ -x $REMOTE_VENV/bin/python ] || $REMOTE_PYTHON -m venv $REMOTE_VENV || \
{ sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && $REMOTE_PYTHON -m venv $REMOTE_VENV; }; \
$REMOTE_VENV/bin/pip install -q --upgrade pip; $REMOTE_VENV/bin/pip install -q $(squote "$spec")"

if [[ -n "$BUCKET" ]]; then
  bucket="${BUCKET#gs://}"
  ssh_workers all "set -e; command -v gcsfuse >/dev/null || { \
echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; }; \
mkdir -p $REMOTE_MOUNT_ROOT/$bucket; mountpoint -q $REMOTE_MOUNT_ROOT/$bucket || \
gcsfuse --implicit-dirs $bucket $REMOTE_MOUNT_ROOT/$bucket"
fi

# Every host prints what it sees; any host whose slice is not the expected size fails the ssh (exit 1).
check='import sys, jax; n, want = jax.device_count(), int(sys.argv[1]); '
check+='print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, '
check+='{n} in the slice (expected {want})"); '
check+='sys.exit(0 if n == want else f"jax.device_count() is {n}, expected {want}: a host does not see the whole slice")'
ssh_workers all "$REMOTE_VENV/bin/python -c $(squote "$check") $EXPECTED_DEVICES" ||
  die "device check failed on $TPU_NAME: expected $EXPECTED_DEVICES devices on every host (see the output above)"
echo "$TPU_NAME: every host sees $EXPECTED_DEVICES devices" >&2
