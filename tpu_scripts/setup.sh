#!/usr/bin/env bash
# On every worker: find or install a Python the package supports (the default v4 image ships 3.10; the package
# needs 3.11 or 3.12), install this project with the `tpu` extra into a venv built with it (from a git ref or a
# wheel), check with --bucket that every worker can write, read and delete objects in the bucket (the stages write
# gs:// directly), optionally mount a bucket with gcsfuse for browsing (--mount-bucket: never an output path, since
# gcsfuse cannot rename directories on a flat bucket), then check that every host sees the whole slice
# (jax.device_count() == the slice's devices), failing otherwise.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
_USAGE="usage: setup.sh --name TPU --zone ZONE --accelerator-type v4-8 (--git-url URL [--git-ref REF] | --wheel FILE|URL) [--bucket gs://B]"
common_opts
opt accelerator-type ACCELERATOR_TYPE value v4-8 "slice type (sets the expected device count: v4-8 → 4, v4-32 → 16)" TPU_ACCELERATOR
opt expected-devices EXPECTED_DEVICES value "" "override the expected jax.device_count()"
opt git-url GIT_URL value "" "git repository of this project to install from"
opt git-ref GIT_REF value main "branch, tag or commit of --git-url"
opt wheel WHEEL value "" "instead of git: a local wheel file (copied to the workers), an https:// or gs:// URL"
opt bucket BUCKET value "" "gs://BUCKET[/prefix] the stages will use: every worker must write, read and delete an object there"
opt mount-bucket MOUNT_BUCKET value "" "also mount this bucket with gcsfuse at $REMOTE_MOUNT_ROOT/BUCKET for reading (never give a mount path as an output)"
opt python REMOTE_PYTHON value python3 "the workers' Python for the venv; when it is not >= $PYTHON_MIN, < $PYTHON_BELOW, python3.11 is installed"
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
  check_ssh_agent
  run gcloud compute tpus tpu-vm scp "$WHEEL" "$TPU_NAME:" "${flags[@]}" --worker=all
  spec="./$(basename "$WHEEL")[tpu]"
fi
# A venv built by an earlier setup with another Python is rebuilt; python3.X-venv is not on every image, so it is
# installed when creating the venv fails.
venv_py="$REMOTE_VENV/bin/python"
ssh_workers all "set -e; $(remote_python "$REMOTE_PYTHON")\
if [ -x $venv_py ] && [ \"\$($venv_py -V 2>&1)\" != \"\$(\$py -V 2>&1)\" ]; then rm -rf $REMOTE_VENV; fi; \
[ -x $venv_py ] || \$py -m venv $REMOTE_VENV || { rm -rf $REMOTE_VENV; \
sudo apt-get $APT_WAIT update -qq && sudo apt-get $APT_WAIT install -y -qq \$(basename \$py)-venv && \$py -m venv $REMOTE_VENV; }; \
$REMOTE_VENV/bin/pip install -q --upgrade pip; $REMOTE_VENV/bin/pip install -q $(squote "$spec")" ||
  die "installing on $TPU_NAME failed on a worker (see its output above); exit 3 means no supported Python could be installed"

if [[ -n "$BUCKET" ]]; then
  [[ "$BUCKET" == gs://* ]] || BUCKET="gs://$BUCKET"
  ssh_workers all "JAX_PLATFORMS=cpu $REMOTE_VENV/bin/python -m distil_whisper_jax.preflight --write $(squote "$BUCKET")" ||
    die "a worker of $TPU_NAME cannot write, read and delete objects in $BUCKET (FAIL rows above; the fix is in their last column)"
fi

if [[ -n "$MOUNT_BUCKET" ]]; then
  bucket="${MOUNT_BUCKET#gs://}"
  bucket="${bucket%%/*}"
  ssh_workers all "set -e; command -v gcsfuse >/dev/null || { \
echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get $APT_WAIT update -qq && sudo apt-get $APT_WAIT install -y -qq gcsfuse; }; \
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
