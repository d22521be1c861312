#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py says what it measures): run it on a machine with a CUDA GPU, from the repository
# root; a few minutes on one data-centre GPU.
#
#     bash bench/gpu_check.sh                  # with the project installed (.venv/bin/python, else python3)
#     bash bench/gpu_check.sh --skip search    # further arguments go to bench/gpu_check.py
#
# On a GPU machine that cannot install packages or download CIFAR-10, even one holding torch and nothing else: build
# the bundle bench/make_gpu_carry.sh writes on a machine that can, copy bench_out/gpu_carry/ over, and this script
# uses it (DT_GPU_CARRY=DIR points elsewhere): it holds every package the check imports beyond torch. Without it, a
# section whose packages are missing says so in its row and the others run.
#
# Results: $OUT/gpu_check.jsonl (one JSON object a line; the last is the summary with the targets) and
# $OUT/gpu_check.log; OUT defaults to bench_out/gpu_check. The output ends with a table, a line per section. Exit
# status: 0 when every section measured; 1 when one failed, overran its time limit or could not run (no CUDA device,
# a package missing); 2 for a bad flag.
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

# what the machine lacks, from the carried bundle: unpacked once per bundle (modes kept: raylet must run), and first
# on the path, so that the packages in it are the ones that fit each other
if ! "$PY" -c "import numpy, pydantic, ray.tune" 2>/dev/null && [ -f "$CARRY/site.tar.xz" ]; then
  SITE=/tmp/dt-site STAMP=$(stat -c %s-%Y "$CARRY/site.tar.xz")
  if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
    rm -rf "$SITE"
    "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
        "$CARRY/site.tar.xz" "$SITE" && echo "$STAMP" > "$SITE/.stamp" \
        || echo "# could not unpack $CARRY/site.tar.xz: sections that need more than torch will fail"
  fi
  export PYTHONPATH=$SITE
fi
# the repository on the path of this process and of the Ray workers it starts (they inherit the environment)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

args=(--out "$OUT")
[ -d "$CARRY/cifar-10-batches-py" ] && args+=(--data-dir "$CARRY")
[ "$DRY" = 1 ] && args+=(--dry-run)
"$PY" -m bench.gpu_check "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
