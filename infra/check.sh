#!/usr/bin/env bash
# Static checks of the deploy, without a terraform binary, Docker or a GCP project (run by `make test` through
# tests/integration/test_infra_check.py):
#   1. checkov on infra/terraform and infra/runner.Dockerfile: 0 failed checks (every skip is an inline
#      `#checkov:skip=CKV_...:reason` next to what it excuses);
#   2. infra/check_wiring.py (python-hcl2): references resolve, grants before VMs, autoscaler on both lanes,
#      scheduler -> reconcile, push subscriptions -> functions, the image's ignore-file and packages.
#
# Usage: infra/check.sh              everything, on this repository
#        infra/check.sh wiring ROOT  only the wiring check, on the repository copy at ROOT (tests use it)
#
# The tools live in pinned, isolated virtual environments under .soul/tools/ (created on first use from PyPI;
# checkov and python-hcl2 both ship a module named `hcl2`, so they get one each). PYTHON picks the interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tools="$repo/.soul/tools"
python="${PYTHON:-python3}"
CHECKOV_VERSION=3.3.30
HCL2_VERSION=8.1.4

# tool DIR REQUIREMENT: a venv with REQUIREMENT installed, made once (under a lock: parallel runs share it).
tool() {
  local dir="$tools/$1" requirement="$2"
  if [[ ! -f "$dir/.installed" ]]; then
    mkdir -p "$tools"
    (
      flock 9 2>/dev/null || true
      if [[ ! -f "$dir/.installed" ]]; then
        echo "check.sh: installing $requirement into $dir" >&2
        rm -rf "$dir"
        "$python" -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" >&2
        touch "$dir/.installed"
      fi
    ) 9>"$tools/.lock"
  fi
  echo "$dir/bin"
}

wiring() {
  local bin
  bin="$(tool "hcl2-$HCL2_VERSION" "python-hcl2==$HCL2_VERSION")"
  "$bin/python" "$here/check_wiring.py" "$1"
}

if [[ "${1:-}" == "wiring" ]]; then
  wiring "${2:?usage: infra/check.sh wiring ROOT}"
  exit
fi

checkov_bin="$(tool "checkov-$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION")"
# --skip-download: no calls to Prisma Cloud for guidelines (the checks themselves are all local).
checkov() { "$checkov_bin/checkov" --skip-download --compact --quiet "$@"; }
status=0
echo "== checkov: terraform"
checkov --directory "$here/terraform" --framework terraform || status=1
echo "== checkov: runner.Dockerfile"
checkov --file "$here/runner.Dockerfile" --framework dockerfile || status=1
echo "== wiring"
wiring "$repo" || status=1
exit "$status"
