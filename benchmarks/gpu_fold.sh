#!/usr/bin/env bash
# One slice of the real-data fold on a GPU (issue 8, stage 2), run from the repository root.
#
# A device command may run 10 minutes, the fold takes longer, and the device machine keeps its
# files only while it stays warm (30 s after a call). So each call trains for at most
# FOLD_SLICE_S seconds (default 540); train.py checkpoints every epoch in WORKDIR/run (under runs/,
# git-ignored, left in place on the warm machine between calls) and the same command resumes
# there. This script's own files (train.log, slice_seconds, out/) sit beside it in WORKDIR, never
# inside the run directory, which train.py claims only when it is empty or its own. Call it again at once until it prints "FOLD DONE"; then it appends a train_fold line
# (best val mAP, epochs, wall seconds summed over slices, images/s, encoder init) to the machine's
# results file (benchmarks/gpu_env.sh), which comes back as $OUT/results.jsonl.
# The checkpoints are too large to come back through $OUT: if the machine is released between
# slices, the fold starts over on the next one.
#
# The data must travel with the call (../shared is not sent): once, on the calling machine,
# `bash benchmarks/gpu_wheels.sh` packs it into .gpudata/tgs.tar (git-ignored, 28 MB of the 64 MiB
# a call may carry) beside the wheels .whl; every call names ".whl", ".deps", ".gpudata" in carry,
# and this script unpacks it into .data/tgs_salt the first time.
# ImageNet weights: PRETRAINED=<converted dir> is passed as --pretrained; unset, the script looks
# for cached ones (benchmarks/find_imagenet_weights.py) and, finding none, trains from a random
# encoder and says so in its log and in the train_fold line (encoder_init).
#   DRY_RUN=1 bash benchmarks/gpu_fold.sh   # CPU check of this script: tiny model, synthetic data, 2 epochs
# Comes back under $OUT: results.jsonl, metrics.jsonl, train.log.
#
# The original starts the encoder from ImageNet weights: set PRETRAINED=DIR (a converted
# checkpoint, `python -m convert.torch_to_flax --arch se_resnext50_32x4d ...`) or pass
# --pretrained=DIR as an argument. Without either, the encoder starts from random weights; the
# script says so before training and the train_fold record's encoder_init is "random".
# (A converted SE-ResNeXt-50 is ~100 MB, more than a device call may carry, so on the lent
# machines the fold runs from random weights unless the checkpoint is already there.)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${DRY_RUN:-}" ]; then
  export GPU_RESULTS="${GPU_RESULTS:-runs/gpu-dry/results.jsonl}" ENCODER=tiny EPOCHS="${EPOCHS:-2}" PRETRAINED=""
  export TGS_SALT_DIR="$("${PYTHON:-python3}" -c 'from salt_jax.data.synthetic import ensure_default_data as d; print(d())')"
  set -- --batch_size=8 --switch_epoch=1 "$@"
fi
source benchmarks/gpu_env.sh
ENCODER="${ENCODER:-50}"
FOLD="${FOLD:-0}"
EPOCHS="${EPOCHS:-120}"
DATA="${TGS_SALT_DIR:-.data/tgs_salt}"
if [ ! -f "$DATA/train.csv" ] && [ -f .gpudata/tgs.tar ] && [ "$DATA" = .data/tgs_salt ]; then
  mkdir -p .data && tar -xf .gpudata/tgs.tar -C .data
fi
WORKDIR="${WORKDIR:-runs/gpu-fold-se${ENCODER}-f${FOLD}}"
RUN="$WORKDIR/run"  # train.py's workdir
OUT="${OUT:-$WORKDIR/out}"
mkdir -p "$WORKDIR" "$OUT"
[ -f "$DATA/train.csv" ] || { echo "gpu_fold.sh: no $DATA/train.csv; carry the data (see the header)" >&2; exit 2; }
# PRETRAINED unset: look for cached ImageNet weights on this machine; set (even empty): use it.
PRETRAINED="${PRETRAINED-$("$PY" benchmarks/find_imagenet_weights.py --encoder "$ENCODER")}"
if [ -n "$PRETRAINED" ]; then
  [ -f "$PRETRAINED/metadata.json" ] || { echo "gpu_fold.sh: PRETRAINED=$PRETRAINED holds no converted checkpoint (metadata.json)" >&2; exit 2; }
  echo "encoder init: ImageNet weights $PRETRAINED" | tee -a "$WORKDIR/train.log"
elif printf '%s\n' "$@" | grep -q -- '^--pretrained'; then
  echo "encoder init: the ImageNet weights given by --pretrained" | tee -a "$WORKDIR/train.log"
else
  echo "encoder init: NO PRETRAINED WEIGHTS: the encoder starts from RANDOM weights, not the original's" \
       "ImageNet start (set PRETRAINED=DIR or pass --pretrained=DIR); expect a much lower val mAP" | tee -a "$WORKDIR/train.log"
fi

start=$(date +%s)
timeout --signal=TERM --kill-after=30 "${FOLD_SLICE_S:-540}" \
  "$PY" train.py --encoder="$ENCODER" --fold="$FOLD" --data_dir="$DATA" --epochs="$EPOCHS" \
  --workdir="$RUN" --no_progress ${PRETRAINED:+--pretrained="$PRETRAINED"} "$@" 2>&1 | tee -a "$WORKDIR/train.log"
rc=${PIPESTATUS[0]}
# Wall time and slice count accumulate across calls (the gaps between calls are not counted).
echo $(( $(date +%s) - start )) >>"$WORKDIR/slice_seconds"
cp "$RUN/metrics.jsonl" "$WORKDIR/train.log" "$OUT/" 2>/dev/null

if [ "$rc" -eq 0 ]; then
  "$PY" benchmarks/bench_grid.py --fold-record "$RUN" --model "$ENCODER" --fold "$FOLD" \
    --wall-s "$(( $(paste -sd+ "$WORKDIR/slice_seconds") ))" --slices "$(wc -l <"$WORKDIR/slice_seconds")" \
    --results "$GPU_RESULTS" --out "$OUT" && echo "FOLD DONE"
elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "FOLD SLICE ENDED after ${FOLD_SLICE_S:-540} s: call the same command again now to resume"
else
  echo "gpu_fold.sh: train.py failed with exit code $rc (see $WORKDIR/train.log)" >&2
  exit "$rc"
fi
