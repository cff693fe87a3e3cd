#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), once, before the first GPU call: fills the git-ignored
# folders that the GPU calls carry, since the device machine has no network.
#
#   bash benchmarks/gpu_wheels.sh            # .whl + .deps (for gpu_all.sh) and .gpudata (for gpu_fold.sh)
#
#   .whl/   cp312 manylinux x86-64 wheels of the packages in benchmarks/gpu_versions.txt that
#           the image may hold in other versions (flax, optax, orbax-checkpoint, tensorstore);
#           benchmarks/gpu_env.sh installs them there. jax, jaxlib and numpy are the image's own.
#   .deps/  pretrainedmodels' package (an sdist on PyPI, no wheel): the encoder of the PyTorch
#           UNet that gpu_all.sh times against (convert/reference.py loads its senet.py by path).
#   .gpudata/tgs.tar  the real data for gpu_fold.sh (train/, train.csv, depths.csv), from
#           TGS_SALT_DIR or ../shared/tgs_salt, packed by benchmarks/pack_gpu_data.py (28 MB: the
#           images as one-channel PNGs of the pixels our loader reads; the folder itself is 36 MB,
#           which with the wheels was refused as over the 64 MiB a call carries).
#
# A call carries at most 64 MiB: .whl is ~25 MB (tensorstore ~21), .gpudata ~28 MB, the repo ~2 MB.
# Then, from the repository root, through the device tool (see docs/BENCHMARKS.md, GPU section):
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=600, carry=[".whl", ".deps", ".gpudata"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

pins() {  # name==version lines of gpu_versions.txt for the given names
  local name
  for name in "$@"; do grep -E "^${name}==" benchmarks/gpu_versions.txt; done
}

rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  $(pins flax optax orbax-checkpoint tensorstore)

rm -rf .deps && mkdir -p .deps/sdist
"$PY" -m pip download -q --no-deps --no-binary=:all: -d .deps/sdist pretrainedmodels==0.7.4
tar -xzf .deps/sdist/pretrainedmodels-0.7.4.tar.gz -C .deps/sdist
mv .deps/sdist/pretrainedmodels-0.7.4/pretrainedmodels .deps/ && rm -rf .deps/sdist

DATA="${TGS_SALT_DIR:-../shared/tgs_salt}"
if [ -f "$DATA/train.csv" ]; then
  # Any Python with numpy and Pillow: the project's venv (`make venv`) where there is one.
  packer="${DATA_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo "$PY")}"
  "$packer" benchmarks/pack_gpu_data.py "$DATA"
else
  echo "gpu_wheels.sh: no $DATA/train.csv, so no .gpudata (set TGS_SALT_DIR for gpu_fold.sh's data)" >&2
fi
du -sh --apparent-size .whl .deps .gpudata 2>/dev/null
