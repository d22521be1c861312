#!/usr/bin/env bash
# Builds bench_out/gpu_carry/ (ignored by git): what bench/gpu_check.sh needs on a GPU machine that has torch but
# cannot install packages or download CIFAR-10. Run it on a machine with this project installed, then copy the
# folder to the same place in the checkout on the GPU machine:
#
#     CIFAR10_DIR=/path/to/cifar10 bash bench/make_gpu_carry.sh   # a few minutes (the xz step)
#     bash bench/make_gpu_carry.sh --no-ray                        # only the CIFAR-10 subset: no packages
#     CARRY_PYTHON=3.11 bash bench/make_gpu_carry.sh              # for the GPU machine's Python (default 3.12)
#     CARRY_HAVE="numpy pandas ..." bash bench/make_gpu_carry.sh  # leave out what the GPU machine already has
#
# CARRY_HAVE: distribution names (space-separated; case, '-', '_' and '.' alike) the GPU machine already has. pip
# still resolves the whole closure, so the carried packages are the versions that fit; then the wheels of these
# are dropped and the GPU machine's own copies are imported instead. For a GPU image holding the usual scientific
# stack (numpy, pandas, pyarrow, requests, protobuf...) but not Ray or pydantic, this keeps the folder under ~45 MiB:
#
#     CARRY_HAVE="numpy pandas pyarrow pyyaml requests protobuf msgpack click filelock packaging fsspec attrs
#                 typing-extensions idna certifi urllib3 charset-normalizer python-dateutil six" \
#         CIFAR10_DIR=/path/to/cifar10 bash bench/make_gpu_carry.sh
#
# On the GPU machine, `PYTHONPATH=/tmp/dt-site python3 -m pip check` (after one gpu_check.sh run has unpacked the
# site) says whether its own copies meet what the carried packages require.
#
# It holds
#   cifar-10-batches-py/  5,000 train + 1,000 test CIFAR-10 images in the original layout (bench/cifar_subset.py),
#                         cut from the CIFAR-10 folder $CIFAR10_DIR (default ./data); ~18 MiB
#   site.tar.xz           every package the check imports beyond torch, with all they need in turn (Ray Tune,
#                         pydantic, numpy, pandas, pyarrow... as pip resolves them, less $CARRY_HAVE), as wheels for
#                         CPython $CARRY_PYTHON (default 3.12) on x86-64 Linux, unpacked, without the parts of Ray the
#                         check never uses (Java jars, RLlib, Serve, LLM, the dashboard's web page), its binaries
#                         stripped of symbols, re-packed with xz. gpu_check.sh unpacks it to /tmp/dt-site and puts
#                         that first on PYTHONPATH, so a machine holding torch and $CARRY_HAVE runs every section.
# Optuna and MLflow are not included: the check drives Tune directly (tune.Tuner over
# tuner.trial.trainable.train_trial),
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
  rm -f "$CARRY/site.tar.xz"
  CARRY_HAVE=${CARRY_HAVE:-} $PY - "$WHEELS" "$STAGE" "$CARRY/site.tar.xz" <<'EOF'
import lzma, os, pathlib, re, shutil, subprocess, sys, tarfile, zipfile
wheels, stage, target = map(pathlib.Path, sys.argv[1:])
def dist(name):  # PEP 503 normal form: Ray's "typing_extensions" wheel is the "Typing-Extensions" the target has
    return re.sub(r"[-_.]+", "-", name).lower()
have = {dist(name) for name in os.environ["CARRY_HAVE"].split()}
carried, left_out = [], []
for wheel in sorted(wheels.glob("*.whl")):
    name = dist(wheel.name.split("-")[0])
    (left_out if name in have else carried).append(name)
    if name in have:
        continue
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = pathlib.Path(archive.extract(info, stage))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(mode & 0o777)  # zipfile drops modes; Ray's raylet and gcs_server must stay executable
print("carried:", " ".join(carried))
print("left out (CARRY_HAVE):", " ".join(left_out) or "none")
# Java, Ray libraries the check never imports, and the dashboard's web page (a Tune-only Ray starts no dashboard)
for unused in ("jars", "rllib", "serve", "llm", "dashboard/client"):
    shutil.rmtree(stage / "ray" / unused, ignore_errors=True)
# Ray's _raylet.so, raylet and gcs_server ship their symbol tables (a third of their 120 MB); only stack traces
# read them
elves = [p for p in stage.rglob("*") if p.is_file() and not p.is_symlink() and p.open("rb").read(4) == b"\x7fELF"]
if shutil.which("strip"):
    subprocess.run(["strip", "--strip-unneeded", *map(str, elves)], check=True)
else:
    print("no strip on PATH: the binaries keep their symbols (the bundle is ~15 MB larger)")
# the x86 filter first: it makes the binaries' jump targets alike, ~9% off them; text passes it unchanged
filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
with lzma.open(target, "wb", filters=filters) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
    tar.add(stage, arcname=".")
EOF
fi
du -sh "$CARRY"/*; du -sh "$CARRY"
