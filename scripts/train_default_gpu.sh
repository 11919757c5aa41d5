#!/usr/bin/env bash
# The bundled default model's recipe for one short GPU lease (v3): both stages of the 64^3 compact model from
# scratch, in one command of at most TOTAL_S seconds, step counts fitted to the time by measurement.
#
#   OUT=build/gpu scripts/train_default_gpu.sh          # on the GPU machine; then, back on a CPU:
#   python scripts/bundle_model.py build/gpu/home/models/gpu64 meddiff_cli/bundled/default
#   python scripts/fit_intensity_calibration.py meddiff_cli/bundled/default PREP_CT --modality ct --count 100
#   OUT=build/bench benchmarks/quality_default.sh       # the quality table; bundle only if it beats the old one
#
# Why a GPU recipe at 64^3 and the compact preset: the CPU recipe (scripts/train_default.sh) spent 1.5 CPU-hours
# on 5000 denoiser steps and reused an autoencoder of 600 steps on 32^3 crops, and that autoencoder is what limits
# realism (docs/model.md, "where the gap is"). An H200 runs the same networks 100x faster, so minutes buy
# thousands of whole-volume autoencoder steps with the patch GAN active (on the clipped volume, adv_input
# clip-st) and a denoiser trained on 4x larger batches. The networks stay compact so that sampling stays
# CPU-sized (issue: no more than 1.5x today's CPU cost per volume).
#
# Phases (CPU and GPU overlap): phantoms for stage 1 (COUNT_AE per modality) while the GPU times the samplers
# for issue 13 (benchmarks/sample_speed.py); stage 1 on those while the pool grows to COUNT per modality
# (same corpus seeds, so the pool is exactly `meddiff phantom --count COUNT`); stage 2 on the whole pool;
# then `meddiff sample --count 20` end to end. Each stage's steps = scripts/steps_for_budget.py's measured
# rate x its share of the time; a stage that overruns its clock is stopped by SIGTERM, which checkpoints.
# Outputs in $OUT: home/models/$NAME (the model), log.txt (everything), bench.md (issue 13's GPU table).
set -uo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
OUT=${OUT:-build/gpu}
TOTAL_S=${TOTAL_S:-540}        # the whole command, phantoms to the last file
AE_S=${AE_S:-170}              # stage 1's share
COUNT_AE=${COUNT_AE:-256}      # phantoms per modality before stage 1 starts
COUNT=${COUNT:-800}            # phantoms per modality for stage 2
AE_BATCH=${AE_BATCH:-8}
DIFF_BATCH=${DIFF_BATCH:-32}
WORKERS=${WORKERS:-6}          # phantom workers per modality
DEVICE=${DEVICE:-cuda}         # cpu: a quick dry run of this script
NAME=${NAME:-gpu64}            # not "default": that name is the bundled model, which the timings below copy in
RESULTS=${RESULTS:-}           # if set: the model as it would be bundled (fp16), previews and logs copied here
export MEDDIFF_HOME=${MEDDIFF_HOME:-$OUT/home}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
log="$OUT/log.txt"
say() { echo "[$(( $(date +%s) - began )) s] $*" | tee -a "$log" >&2; }
meddiff() { python3 -m meddiff_cli "$@"; }

pool() {  # pool MODALITY COUNT: phantoms (resumable: a larger COUNT adds cases) and their preprocessed copies
  local seed spacing
  seed=$([ "$1" = ct ] && echo 1000 || echo 2000)
  spacing=$([ "$1" = ct ] && echo 6 || echo 3.5)
  meddiff phantom --modality "$1" --count "$2" --size 64 --seed "$seed" --out "$OUT/pool_$1" --workers "$WORKERS" -q &&
    meddiff preprocess "$OUT/pool_$1" --out "$OUT/prep_$1" --size 64 --spacing "$spacing" --workers "$WORKERS" -q > /dev/null
}

say "start: $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>&1)"
python3 -c "import monai, nibabel, platformdirs, pydicom, meddiff_cli.cli.app" 2>> "$log" || { say "imports failed"; exit 1; }
pool ct "$COUNT_AE" 2>> "$log" & ct_job=$!
pool mri "$COUNT_AE" 2>> "$log" & mri_job=$!
# issue 13 on this GPU while the CPUs make phantoms: rows print as they are measured
timeout 75 python3 benchmarks/sample_speed.py --model default --device "$DEVICE" --batch-sizes 1,20 --repeats 10 \
  --steps 10 > "$OUT/bench.md" 2>> "$log" & bench_job=$!
wait "$ct_job" "$mri_job" || { say "phantoms failed"; exit 1; }
say "stage-1 data ready ($COUNT_AE per modality)"
wait "$bench_job"; say "sampler table done (exit $?)"

ae_steps=$(python3 scripts/steps_for_budget.py --stage autoencoder --preset compact --size 64 --patch-size 0 \
  --batch-size "$AE_BATCH" --seconds "$AE_S" --device "$DEVICE" 2>> "$log") || { say "step-count measurement failed"; exit 1; }
pool ct "$COUNT" 2>> "$log" & ct_job=$!
pool mri "$COUNT" 2>> "$log" & mri_job=$!
say "stage 1: $ae_steps steps"
timeout -s TERM $(( AE_S + 40 )) python3 -m meddiff_cli train "$OUT/prep_ct" "$OUT/prep_mri" --name "$NAME" \
  --stage autoencoder --preset compact --device "$DEVICE" --seed 0 --workers 3 --ae-steps "$ae_steps" --json \
  --set train.ae_patch_size=0 --set "train.batch_size=$AE_BATCH" --set train.adv_weight=0.02 \
  --set "train.adv_warmup_steps=$(( ae_steps * 2 / 5 ))" --set "train.adv_ramp_steps=$(( ae_steps / 10 + 1 ))" \
  --set train.warmup_steps=100 --set "train.val_every=$(( ae_steps / 4 + 1 ))" \
  --set "train.preview_every=$ae_steps" --set "train.checkpoint_every=$(( ae_steps / 4 + 1 ))" \
  > "$OUT/train_ae.json" 2>> "$log"
say "stage 1 exit $?"
wait "$ct_job" "$mri_job" || say "pool growth failed: stage 2 trains on what exists"
say "stage-2 data: $(ls "$OUT/prep_ct/images" | wc -l) ct, $(ls "$OUT/prep_mri/images" | wc -l) mri"

left=$(( TOTAL_S - ($(date +%s) - began) - 45 ))   # 45 s for the copies and the end-to-end timing
diff_steps=$(python3 scripts/steps_for_budget.py --stage diffusion --preset compact --size 64 \
  --batch-size "$DIFF_BATCH" --seconds "$left" --fraction 0.75 --device "$DEVICE" 2>> "$log") || { say "step-count measurement failed"; exit 1; }
say "stage 2: $diff_steps steps in ~$left s"
timeout -s TERM $(( left + 10 )) python3 -m meddiff_cli train "$OUT/prep_ct" "$OUT/prep_mri" --name "$NAME" \
  --stage diffusion --device "$DEVICE" --workers 3 --diffusion-steps "$diff_steps" --json \
  --set "train.batch_size=$DIFF_BATCH" --set train.lr=0.0003 --set train.ema_decay=0.999 \
  --set train.warmup_steps=200 --set "train.val_every=$(( diff_steps / 4 + 1 ))" \
  --set "train.preview_every=$diff_steps" --set "train.checkpoint_every=$(( diff_steps / 8 + 1 ))" \
  > "$OUT/train_diffusion.json" 2>> "$log"
say "stage 2 exit $?"
if [ -n "$RESULTS" ]; then
  mkdir -p "$RESULTS"
  python3 scripts/bundle_model.py "$MEDDIFF_HOME/models/$NAME" "$RESULTS/model" 2>> "$log"
  for stage in autoencoder diffusion; do
    last=$(ls "$MEDDIFF_HOME/models/$NAME/previews/${stage}_"*.png 2>/dev/null | tail -1)
    [ -n "$last" ] && cp "$last" "$RESULTS/"
  done
  cp "$OUT/bench.md" "$log" "$RESULTS/"
fi

for model in default "$NAME"; do  # the bundled 64^3 model, then the new one
  meddiff sample --modality ct --count 1 --model "$model" --device "$DEVICE" --out "$OUT/warm_$model" -q 2>> "$log" > /dev/null
  start=$(date +%s.%N)
  meddiff sample --modality ct --count 20 --model "$model" --device "$DEVICE" --out "$OUT/e2e_$RANDOM" --json -q > "$OUT/e2e.json" 2>> "$log"
  say "meddiff sample --count 20 --model $model: $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s end to end; $(python3 -c "import json; d = json.load(open('$OUT/e2e.json')); print({k: d.get(k) for k in ('backend', 'precision', 'device', 'batch_size')})" 2>&1)"
done
say "done"
[ -n "$RESULTS" ] && cp "$log" "$RESULTS/"
