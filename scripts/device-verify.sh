#!/usr/bin/env bash
# Run the host suite's hardware checks (tests/host, marked gpu/gh200) on a machine with an NVIDIA
# GPU, from a copy of this checkout, with as few Python packages as possible:
#   - with the project's dependencies importable: `gh200 verify --local` (table + JSON);
#   - else with only pytest, pytest-testinfra and PyYAML: the same suite through pytest.
# Usage: scripts/device-verify.sh [--expect FILE] [--driver-branch N] [--python PY] [--pylib DIR]
# --pylib (default ./.device-pylib when present): a directory of Python packages made elsewhere,
# e.g. `uv pip install --target .device-pylib --python-version 3.X pytest pytest-testinfra PyYAML`.
# Writes verify.json, verify.log and env.txt to $OUT (or ./device-verify-out); exit 0 when no
# check failed, 1 when one did, 2 when the environment lacks what the suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."
expect=tests/host/expectations/h200-device.yml
branch=""
py=${PYTHON:-python3}
pylib=""
[ -d .device-pylib ] && pylib=$PWD/.device-pylib
while [ $# -gt 0 ]; do
  case "$1" in
    --expect) expect=$2; shift 2 ;;
    --driver-branch) branch=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    --pylib) pylib=$(cd "$2" && pwd); shift 2 ;;
    *) echo "error: unknown argument $1 (fix: see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
out=${OUT:-device-verify-out}
mkdir -p "$out"
[ -f "$expect" ] || { echo "error: expectation file $expect not found (fix: pass --expect FILE)" >&2; exit 2; }
expects=(--expect "$expect")
if [ -n "$branch" ]; then
  printf 'gh200_nvidia_driver_branch: "%s"\n' "$branch" > "$out/driver-branch.yml"
  expects+=(--expect "$out/driver-branch.yml")
fi

{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -srm)"
  echo "python: $($py -c 'import sys; print(sys.version.split()[0])' 2>&1)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L && nvidia-smi --query-gpu=driver_version,memory.total --format=csv
  nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || true
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

if [ -n "$pylib" ]; then export PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}"; fi
missing=$($py - <<'PY'
import importlib.util
need = ["pytest", "testinfra", "yaml"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
  echo "error: python modules missing for the host suite: $missing (fix: install pytest, pytest-testinfra and PyYAML, e.g. pip install --no-index --find-links WHEELS pytest pytest-testinfra PyYAML)" >&2
  exit 2
fi

export PYTHONPATH="$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
if $py -c 'import gh200.cli' 2>/dev/null; then
  echo "running: gh200 verify --local ${expects[*]} --only hardware"
  set +e
  $py -m gh200.cli verify --local "${expects[@]}" --only hardware --json > "$out/verify.json" 2> "$out/verify.log"
  rc=$?
  set -e
  $py - "$out/verify.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
for c in result["checks"]:
    print(f"{c['outcome']:<8} {c['check']:<55} {c['detail'][:150]}")
print(result["summary"], f"{result['seconds']}s", result["target"])
PY
  cat "$out/verify.log" >&2
  exit $rc
fi

echo "gh200 is not importable here (its dependencies are missing): running the suite with pytest alone"
args=()
for ((i = 1; i < ${#expects[@]}; i += 2)); do args+=(--gh200-expect "${expects[$i]}"); done
set +e
$py -m pytest tests/host --hosts=local:// -m "gpu or gh200" "${args[@]}" \
  --gh200-report "$out/verify.jsonl" -q -rN --tb=line 2>&1 | tee "$out/verify.log"
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
