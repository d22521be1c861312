#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py says what it measures): run it on a machine with a CUDA GPU, from the repository
# root; a few minutes on one data-centre GPU.
#
#     bash bench/gpu_check.sh                  # with the project installed (.venv/bin/python, else python3)
#     bash bench/gpu_check.sh --skip search    # further arguments go to bench/gpu_check.py
#
# For the search row it needs Ray and CIFAR-10. On a GPU machine with torch but no network to install from, build
# the bundle bench/make_gpu_carry.sh writes on a machine that has both, copy bench_out/gpu_carry/ over, and this
# script uses it (DT_GPU_CARRY=DIR points elsewhere). Without it the search row says it was skipped; the rest runs.
#
# Results: $OUT/gpu_check.jsonl (one JSON object a line; the last is the summary with the targets) and
# $OUT/gpu_check.log; OUT defaults to bench_out/gpu_check.
#
# Without a GPU, every step tiny on the CPU (what tests/test_bench.py runs):
#     bash bench/gpu_check.sh --dry-run        or        DT_GPU_CHECK_DRY=1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${DT_GPU_CHECK_DRY:-0}
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
CARRY=${DT_GPU_CARRY:-bench_out/gpu_carry}
OUT=${OUT:-bench_out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

# Ray where the machine has none: the carried bundle, unpacked once per machine (modes kept: raylet must run)
if ! "$PY" -c "import ray" 2>/dev/null && [ -f "$CARRY/site.tar.xz" ]; then
  [ -d /tmp/dt-site/ray ] || "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
      "$CARRY/site.tar.xz" /tmp/dt-site || echo "# could not unpack $CARRY/site.tar.xz: the search will be skipped"
  export PYTHONPATH=/tmp/dt-site
fi
# the repository on the path of this process and of the Ray workers it starts (they inherit the environment)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

args=(--out "$OUT")
[ -d "$CARRY/cifar-10-batches-py" ] && args+=(--data-dir "$CARRY")
[ "$DRY" = 1 ] && args+=(--dry-run)
"$PY" -m bench.gpu_check "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
