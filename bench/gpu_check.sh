#!/usr/bin/env bash
# The GPU check of issue 6 (bench/gpu_check.py says what it measures): one prepared run for a session that has a
# device machine, under 5 minutes on one H100 or H200. The device image has torch but not Ray, and a call takes
# at most 64 MiB, which Ray's wheel alone exceeds; so, once, here (~5 minutes; see that script):
#
#     bash bench/make_gpu_carry.sh          # -> bench_out/gpu_carry: CIFAR-10 subset + Ray bundle, ~52 MiB
#
# then one call of the device tool (the venv is not carried: the machine's python3 holds torch):
#
#     run(command="bash bench/gpu_check.sh", carry=["bench_out/gpu_carry"], timeout_s=420)
#
# Results: $OUT/gpu_check.jsonl (one JSON object a line; the last is the summary with the targets) and
# $OUT/gpu_check.log. Without the carry folder the search row says it was skipped and everything else still runs.
#
# Here, without a GPU, every step tiny on the CPU (what tests/test_bench.py runs):
#     bash bench/gpu_check.sh --dry-run        or        DT_GPU_CHECK_DRY=1 bash bench/gpu_check.sh
# Further arguments go to bench/gpu_check.py (e.g. --skip search,extra).
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
