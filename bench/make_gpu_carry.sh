#!/usr/bin/env bash
# Builds bench_out/gpu_carry/ (ignored by git): what bench/gpu_check.sh needs on a GPU machine that has torch but
# cannot install packages or download CIFAR-10. Run it on a machine with this project installed, then copy the
# folder to the same place in the checkout on the GPU machine:
#
#     CIFAR10_DIR=/path/to/cifar10 bash bench/make_gpu_carry.sh   # a few minutes (the xz step)
#     bash bench/make_gpu_carry.sh --no-ray                        # only the CIFAR-10 subset: the search is skipped
#
# It holds
#   cifar-10-batches-py/  5,000 train + 1,000 test CIFAR-10 images in the original layout (bench/cifar_subset.py),
#                         cut from the CIFAR-10 folder $CIFAR10_DIR (default ./data)
#   site.tar.xz           Ray and the packages it needs beyond torch's (jsonschema, tensorboardX, pydantic and
#                         theirs) as wheels for CPython 3.12 on x86-64 Linux, unpacked, without Ray's Java jars
#                         (unused from Python), re-packed with xz to keep the bundle small.
#                         gpu_check.sh unpacks it to /tmp/dt-site and puts that on PYTHONPATH.
# Optuna and MLflow are not included: the check drives Tune directly (tune.Tuner over tuner.trial.train_trial),
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
  # the local venv's versions, so that the pairs that must match (pydantic / pydantic-core) do
  version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
  WANT="ray==$(version ray) jsonschema==$(version jsonschema) jsonschema-specifications==$(version jsonschema-specifications)
        referencing==$(version referencing) rpds-py==$(version rpds-py) tensorboardX==$(version tensorboardX)
        pydantic==$(version pydantic) pydantic-core==$(version pydantic-core) annotated-types==$(version annotated-types)
        typing-inspection==$(version typing-inspection)"
  WHEELS=$(mktemp -d) STAGE=$(mktemp -d)
  trap 'rm -rf "$WHEELS" "$STAGE"' EXIT
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
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
shutil.rmtree(stage / "ray" / "jars", ignore_errors=True)
with tarfile.open(target, "w:xz", preset=6) as tar:
    tar.add(stage, arcname=".")
EOF
fi
du -sh "$CARRY"/* "$CARRY"
