# Sourced (from the repository root) by gpu_all.sh and gpu_fold.sh on the GPU machine, which has
# no network: makes what the calls carry importable and says what the figures are taken with.
#   .whl   wheels from benchmarks/gpu_wheels.sh: installed once per machine into $GPU_SITE, ahead
#          of the image's own packages, so flax/optax/orbax are the versions the Python 3.12
#          suite passed with (benchmarks/gpu_versions.txt, `make test-py312`)
#   .deps  pretrainedmodels, the encoder of the PyTorch UNet (convert/reference.py)
#   .      our package, from the working tree
# gpu_versions prints every version (and any that differs from gpu_versions.txt) to stdout.
PY="${PYTHON:-python3}"
GPU_SITE="${GPU_SITE:-/tmp/salt_jax_site}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  echo "gpu_env.sh: $PY is not Python 3.12, the wheels' and the GPU machines' Python: .whl left out" >&2
elif compgen -G ".whl/*.whl" >/dev/null; then
  stamp="$(ls .whl | sha1sum)"  # a warm machine keeps the install while the carried set is the same
  if [ "$(cat "$GPU_SITE/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$GPU_SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$GPU_SITE" .whl/*.whl \
      || { echo "gpu_env.sh: pip could not install the carried .whl/*.whl" >&2; exit 2; }
    echo "$stamp" >"$GPU_SITE/.stamp"
  fi
  PYTHONPATH="$GPU_SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_env.sh: no .whl carried: the image's own flax/optax/orbax are used (see benchmarks/gpu_wheels.sh)" >&2
fi
export PYTHONPATH="$PWD:$PWD/.deps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# One results file for every call on this machine, under runs/ (git-ignored, so a warm machine
# keeps it, where each call re-sends the tracked benchmarks/results.jsonl): the tracked lines,
# then those this machine added. Each call's $OUT/results.jsonl is thus the whole set; copy it
# over benchmarks/results.jsonl after every call, and a fresh machine continues from there.
GPU_RESULTS="${GPU_RESULTS:-runs/gpu/results.jsonl}"
mkdir -p "$(dirname "$GPU_RESULTS")"
# (The machine's file is missing on a fresh machine: cat must not fail the pipeline under pipefail,
# or the tracked lines never arrive and --resume measures again what a past lease measured.)
{ cat benchmarks/results.jsonl; [ ! -f "$GPU_RESULTS" ] || cat "$GPU_RESULTS"; } | awk 'NF && !seen[$0]++' \
  >"$GPU_RESULTS.tmp" && mv "$GPU_RESULTS.tmp" "$GPU_RESULTS"

gpu_versions() {
  "$PY" - <<'PY'
import importlib.metadata as md
import sys

pins = dict(line.strip().split("==") for line in open("benchmarks/gpu_versions.txt")
            if "==" in line and not line.startswith("#"))
print("python", sys.version.split()[0])
for name in [*pins, "jax-cuda13-plugin", "jax-cuda13-pjrt", "torch"]:
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    note = f"   <- NOT the tested {pins[name]}" if name in pins and have != pins[name] else ""
    print(name, have, note)
PY
}
