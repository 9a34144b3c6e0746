#!/usr/bin/env bash
# The GPU campaign in one command, from the repository root of a CUDA machine with no network:
#     bash gpu/campaign.sh OUT [--dry-run]
# It installs parbp from this tree and the payload's wheels (make gpu-payload; nothing is downloaded) into a
# fresh folder that leads PYTHONPATH, points PARBP_DATA at the payload's MNIST, and runs python -m
# parbp.gpu_campaign --out OUT (see its docstring for the steps and the files written into OUT).
set -euo pipefail
out=${1:?usage: bash gpu/campaign.sh OUT [--dry-run]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)  # OUT as given, before the cd to the repository root
cd "$(dirname "$0")/.."
export PARBP_PAYLOAD=${PARBP_PAYLOAD:-build/gpu-payload}
payload=$PARBP_PAYLOAD
python=${PYTHON:-python3}
site=$(mktemp -d)/site
shopt -s nullglob
tag=$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
wheels=("$payload"/wheels/*.whl "$payload"/wheels/$tag/*.whl)  # those for any Python, then this one's
{
  # the payload's wheels first (setuptools >= 77 among them, for the build below), then parbp itself
  if ((${#wheels[@]})); then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}"
  else
    echo "no wheels in $payload/wheels: using this Python's packages only"
  fi
  PYTHONPATH=$site "$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target "$site" .
} > "$out/install.log" 2>&1 || { cat "$out/install.log"; echo "installing parbp failed (log: $out/install.log)"; exit 1; }
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
[ -d "$payload/data" ] && export PARBP_DATA=${PARBP_DATA:-$PWD/$payload/data}
exec "$python" -m parbp.gpu_campaign --out "$out" "$@"
