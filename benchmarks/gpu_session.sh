#!/usr/bin/env bash
# Everything one short GPU lease can measure, in ONE device call (issue 16), from the repository root:
#
#   bash benchmarks/gpu_wheels.sh     # here, once: .whl, .deps, .gpudata
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=600, carry=[".whl", ".deps", ".gpudata"])
#
# A lease is now 15 device-minutes, the machine's start included, so gpu_all.sh's whole table and
# gpu_fold.sh's 120 epochs no longer fit; this spends one call of SESSION_S seconds (default 550) on
#   1. until HEADLINE_S (default 270) seconds have passed, the speed plans below in turn (each
#      skips what results.jsonl already holds for this device, so a later lease goes on where
#      the last stopped), no configuration taking more than 150 s: the headline (SaltUNet-50,
#      batch 32, bf16 train step, every JAX grouped conv against torch AMP channels_last and
#      torch.compile; measured 2026-11-26), the train step at the original's batch of 10, bf16
#      inference, the SE-ResNeXt-101, float32;
#   2. a profile of the fold's train step (SE-ResNeXt-50, the original's batch of 10, bf16, the
#      grouped conv that won step 1): benchmarks/profile_unet.py, at most PROFILE_S (default 120;
#      0 skips it) seconds;
#   3. a slice of the real fold (gpu_fold.sh: fold 0, SE-ResNeXt-50, the original recipe), with
#      that grouped conv, for the rest of the call: its metrics.jsonl gives the seconds per
#      epoch (training, validation, the whole epoch), hence the fold's time.
# Comes back under $OUT: results.jsonl, bench.log, table.md, env.txt (step 1), profile.md (step 2),
# metrics.jsonl, train.log (step 3). The same command on a warm machine resumes steps 1 and 3.
#   DRY_RUN=1 SESSION_S=460 HEADLINE_S=200 bash benchmarks/gpu_session.sh   # CPU check: tiny, synthetic data
set -uo pipefail
cd "$(dirname "$0")/.."
SESSION_S="${SESSION_S:-550}"
plans="--models 50 --batches 32 --precisions bfloat16 --tasks train_step
--models 50 --batches 10 --precisions bfloat16 --tasks train_step --grouped-impls native --torch-variants amp_cl,compile
--models 50 --batches 32 --precisions bfloat16 --tasks inference --grouped-impls native --torch-variants amp_cl,compile
--models 101 --batches 32 --precisions bfloat16 --tasks train_step --grouped-impls native --torch-variants amp_cl
--models 50 --batches 32 --precisions float32 --grouped-impls native --torch-variants eager"
# DRY_RUN=1: gpu_all.sh's tiny CPU check (its own settings override the models and precisions).
[ -z "${DRY_RUN:-}" ] || plans="--tasks train_step
--tasks inference --grouped-impls native"
SELECTIONS="$plans" BENCH_DEADLINE="${HEADLINE_S:-270}" bash benchmarks/gpu_all.sh --config-timeout 150
source benchmarks/gpu_env.sh
OUT="${OUT:-runs/gpu-session}"
mkdir -p "$OUT"
# This GPU's own recommendation (results.jsonl holds other devices' too; nvidia-smi's name is
# the device_kind the lines record); none on a CPU dry run.
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
winner=""
[ -z "$gpu_name" ] || winner="$("$PY" benchmarks/bench_grid.py --table --results "$GPU_RESULTS" \
  | grep -F "RECOMMENDATION ($gpu_name):" | sed -n "s/.*default_grouped_impl -> '\([a-z]*\)'.*/\1/p" | head -1)"
echo "grouped conv for the profile and the fold: ${winner:-the default (no GPU winner measured)}"
export SALT_JAX_GROUPED_CONV="${winner:-}"
profile_model=se_resnext50_32x4d
[ -z "${DRY_RUN:-}" ] || profile_model=tiny
if [ "${PROFILE_S:-120}" -gt 0 ]; then  # PROFILE_S=0: no profile (`timeout 0` would mean no limit)
  # Command buffers (CUDA graphs) off for the profile: the H100 trace of 2026-11-26 showed only
  # 539 operations summing 13 ms of a ~48 ms step: kernels replayed inside a graph are not traced
  # one by one (our reading; the profile now prints its share of the untraced call to check it).
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
    timeout "${PROFILE_S:-120}" "$PY" benchmarks/profile_unet.py --model "$profile_model" --batch 10 --precision bfloat16 \
    --tasks train_step --top 30 >"$OUT/profile.md" 2>&1 || echo "profile_unet.py failed or ran out of time: see profile.md"
  sed -n 1,25p "$OUT/profile.md"
fi
left=$(( SESSION_S - SECONDS - 15 ))
if [ "$left" -lt 90 ]; then
  echo "gpu_session.sh: ${left} s left, too little for a fold slice"
  exit 0
fi
FOLD_SLICE_S="$left" bash benchmarks/gpu_fold.sh
