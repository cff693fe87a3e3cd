#!/usr/bin/env bash
# The whole GPU speed table (issues 8, 16) in slices of one device call each, from the repository root:
#
#   bash benchmarks/gpu_all.sh            # through the device tool, after benchmarks/gpu_wheels.sh here:
#                                         # run(command="bash benchmarks/gpu_all.sh", timeout_s=600, carry=[".whl", ".deps"])
#   DRY_RUN=1 bash benchmarks/gpu_all.sh  # CPU check of this script: tiny model, batch 2, bf16; writes under runs/
#
# Installs nothing from the network (the device has none): benchmarks/gpu_env.sh puts the carried
# wheels (.whl) and pretrainedmodels (.deps) on PYTHONPATH, and our package from the working tree.
# Measures the headline first (SaltUNet-50, batch 32, bf16 train step: every JAX grouped conv, torch
# AMP and torch.compile), then the whole plan in priority order (python benchmarks/bench_grid.py; see
# build_plan there); it starts no configuration later than BENCH_DEADLINE seconds after the script
# started (default 530), so each call ends inside the tool's 600 s limit with all measured so far
# written. --resume skips what this device already
# measured, so the SAME command again continues the table: on a warm machine from its own
# runs/gpu/results.jsonl, on a fresh one from benchmarks/results.jsonl once $OUT/results.jsonl
# was copied over it. The last line says "SPEED TABLE DONE" or "SPEED TABLE NOT DONE: call again".
#
# Before measuring, it looks for cached ImageNet SE-ResNeXt weights (benchmarks/find_imagenet_weights.py;
# torch hub, Hugging Face/timm caches, any se_resnext* file) and converts them for gpu_fold.sh;
# what it found is in env.txt.
# Comes back under $OUT: results.jsonl (every line, old and new), bench.log, table.md, env.txt.
# Extra arguments go to benchmarks/bench_grid.py (e.g. --models 50 --batches 32). SELECTIONS (one
# set of bench_grid arguments per line) runs those plans in turn instead, the extra arguments
# added to each.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${DRY_RUN:-}" ]; then
  export GPU_RESULTS="${GPU_RESULTS:-runs/gpu-dry/results.jsonl}" OUT="${OUT:-runs/gpu-dry/out}"
fi
source benchmarks/gpu_env.sh
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"

# What the numbers were taken on: the card, the driver, the framework builds; the ImageNet weights.
{
  date -u +%FT%TZ; uptime
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "no nvidia-smi"
  gpu_versions
  "$PY" -c "import jax; print('jax devices', jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  [ -n "${DRY_RUN:-}" ] || echo "ImageNet SE-ResNeXt-50 weights for the fold: $("$PY" benchmarks/find_imagenet_weights.py --encoder 50 \
    || echo 'search failed')"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ -n "${DRY_RUN:-}" ]; then
  # The tiny model on the CPU at batch 2 in bf16, the GPU's precision (slow on a CPU: a loaded
  # 2-core box needs minutes per configuration); the torch half only where torch is.
  frameworks=jax; "$PY" -c "import torch" 2>/dev/null && frameworks=jax,torch
  set -- --cpu --models tiny --precisions bfloat16 --frameworks "$frameworks" --torch-variants amp_cl \
    --warmup 1 --windows 1 --iters 1 --matmul-n 256 --config-timeout 1500 "$@"
  BENCH_DEADLINE="${BENCH_DEADLINE:-3600}"
fi
bench() {  # one pass of the plan selected by "$@", resuming, inside this call's deadline
  local left=$(( ${BENCH_DEADLINE:-530} - SECONDS ))
  if [ "$left" -lt 60 ]; then echo "  skipped (deadline): bench $*" | tee -a "$OUT/bench.log"; return 0; fi
  "$PY" benchmarks/bench_grid.py --resume --deadline "$left" --results "$GPU_RESULTS" \
    --out "$OUT" "$@" 2>&1 | tee -a "$OUT/bench.log"
  return "${PIPESTATUS[0]}"
}
: >"$OUT/bench.log"
status=0
if [ -n "${SELECTIONS:-}" ]; then
  # Plans in priority order, one per line (gpu_session.sh); each resumes, all inside one deadline.
  while IFS= read -r selection; do
    read -ra sel <<<"$selection"
    [ "${#sel[@]}" -eq 0 ] || [ "$status" -ne 0 ] || bench "${sel[@]}" "$@" || status=$?
  done <<<"$SELECTIONS"
else
  if [ $# -eq 0 ] && [ -z "${DRY_RUN:-}" ]; then
    # The headline first (issue 16's target: JAX bf16 train step vs the best PyTorch), so even one
    # call measures it: SaltUNet-50 at batch 32, every grouped conv, torch AMP and torch.compile.
    bench --models 50 --batches 32 --precisions bfloat16 --tasks train_step || status=$?
  fi
  [ "$status" -ne 0 ] || bench "$@" || status=$?
fi
"$PY" benchmarks/bench_grid.py --table --results "$GPU_RESULTS" >"$OUT/table.md"
cat "$OUT/table.md"
if [ "$status" -ne 0 ]; then
  echo "SPEED TABLE FAILED (exit $status): see bench.log"
elif grep -q "skipped (deadline)" "$OUT/bench.log"; then
  echo "SPEED TABLE NOT DONE: call the same command again (on a fresh machine, copy \$OUT/results.jsonl over benchmarks/results.jsonl first)"
else
  echo "SPEED TABLE DONE"
fi
exit "$status"
