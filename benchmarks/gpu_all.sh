#!/usr/bin/env bash
# The whole GPU speed measurement (issue 8) as ONE device call, run from the repository root:
#
#   bash benchmarks/gpu_all.sh            # through the device tool: run(command="bash benchmarks/gpu_all.sh", timeout_s=600)
#
# Installs nothing (the device has no network): the machine's python3 already holds jax (CUDA),
# flax, optax and torch; our package is imported from the working tree via PYTHONPATH.
# Measures in priority order (python -m salt_jax.bench; see build_plan there) and stops starting
# configurations at BENCH_DEADLINE seconds (default 510), so the call ends inside the tool's
# 600 s limit with everything measured so far written. --resume skips what this device already
# measured: the same command again (after copying $OUT/results.jsonl over
# benchmarks/results.jsonl, or on a still-warm machine) continues with the rest.
#
# Comes back under $OUT: results.jsonl (every line, old and new), bench.log, table.md, env.txt.
# Extra arguments go to salt_jax.bench (e.g. --models 50 --batches 32).
set -uo pipefail
cd "$(dirname "$0")/.."
# .deps (carried, git-excluded) holds pretrainedmodels' source for the torch UNet's encoder; the
# device image lacks it: echo /.deps/ >> .git/info/exclude; mkdir -p .deps;
# cp -r .venv/lib/python3.11/site-packages/pretrainedmodels .deps/   and carry ".deps".
export PYTHONPATH="$PWD:$PWD/.deps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

# What the numbers were taken on: the card, the driver, the framework builds.
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PY" -m salt_jax.bench --resume --deadline "${BENCH_DEADLINE:-510}" --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
"$PY" -m salt_jax.bench --table >"$OUT/table.md"
cat "$OUT/table.md"
exit "$status"
