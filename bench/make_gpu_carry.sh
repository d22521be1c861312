#!/usr/bin/env bash
# Builds bench_out/gpu_carry/ (ignored by git): what bench/gpu_check.sh needs on a GPU machine that has torch but
# cannot install packages or download CIFAR-10. Run it on a machine with this project installed, then copy the
# folder to the same place in the checkout on the GPU machine:
#
#     CIFAR10_DIR=/path/to/cifar10 bash bench/make_gpu_carry.sh   # a few minutes (the xz step)
#     bash bench/make_gpu_carry.sh --no-ray                        # only the CIFAR-10 subset: no packages
#     CARRY_PYTHON=3.11 bash bench/make_gpu_carry.sh              # for the GPU machine's Python (default 3.12)
#
# It holds
#   cifar-10-batches-py/  5,000 train + 1,000 test CIFAR-10 images in the original layout (bench/cifar_subset.py),
#                         cut from the CIFAR-10 folder $CIFAR10_DIR (default ./data)
#   site.tar.xz           every package the check imports beyond torch, with all they need in turn: Ray Tune,
#                         pydantic, numpy (and pandas, pyarrow, typing-extensions... as pip resolves them), as wheels
#                         for CPython $CARRY_PYTHON (default 3.12) on x86-64 Linux, unpacked, without the parts of
#                         Ray the check never imports (Java jars, RLlib, Serve, LLM), re-packed with xz.
#                         gpu_check.sh unpacks it to /tmp/dt-site and puts that first on PYTHONPATH, so a machine
#                         holding torch and nothing else runs every section.
# Optuna and MLflow are not included: the check drives Tune directly (tune.Tuner over tuner.trial.trainable.train_trial),
# the path whose speed matters; the searcher and the tracker run in the driver, not in the trials.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
CARRY=bench_out/gpu_carry
DATA=${CIFAR10_DIR:-./data}
mkdir -p "$CARRY"

rm -rf "$CARRY/cifar-10-batches-py"
$PY -m bench.cifar_subset --data-dir "$DATA" --out "$CARRY" --train 5000 --test 1000

if [[ "${1:-}" != "--no-ray" ]]; then
  # the local venv's versions of what the check imports, and whatever they need as pip resolves it for the target
  version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
  WANT="ray[tune]==$(version ray) pydantic==$(version pydantic) numpy==$(version numpy)"
  WHEELS=$(mktemp -d) STAGE=$(mktemp -d)
  trap 'rm -rf "$WHEELS" "$STAGE"' EXIT
  # shellcheck disable=SC2086
  $PY -m pip download -q --only-binary=:all: --python-version "${CARRY_PYTHON:-3.12}" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" $WANT
  $PY - "$WHEELS" "$STAGE" "$CARRY/site.tar.xz" <<'EOF'
import pathlib, shutil, sys, tarfile, zipfile
wheels, stage, target = map(pathlib.Path, sys.argv[1:])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = pathlib.Path(archive.extract(info, stage))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(mode & 0o777)  # zipfile drops modes; Ray's raylet and gcs_server must stay executable
for unused in ("jars", "rllib", "serve", "llm"):  # Java, and Ray libraries the check never imports
    shutil.rmtree(stage / "ray" / unused, ignore_errors=True)
with tarfile.open(target, "w:xz", preset=6) as tar:
    tar.add(stage, arcname=".")
EOF
fi
du -sh "$CARRY"/* "$CARRY"
