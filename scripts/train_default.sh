#!/usr/bin/env bash
# The exact, rerunnable recipe of the bundled default model (meddiff_cli/bundled/default).
#
# v2 (CPU, 2 cores with AMX): one 64^3 model for both modalities, chest CT at 6 mm (384 mm field of view) and
# brain MRI at 3.5 mm (224 mm). What v1 taught (docs/model.md, "default model"): its autoencoder keeps the
# anatomy (a phantom encoded + decoded keeps its spine) but its denoiser, trained 1000 steps on 58 cases per
# modality, learned latent statistics, not anatomy. So v2 spends the CPU hours on stage 2:
#   * the autoencoder is v1's (AE_FROM; 600 steps, compact preset), reused as is;
#   * 480 phantoms per modality instead of 64 (10 % held out for validation), encoded once (latent cache);
#   * latents standardised per channel (v1: one global scale left channel 0 at 0.2 std under unit noise);
#   * bf16 autocast on CPUs with AMX/AVX512-BF16 (~2.5x faster steps), batch 8, EMA 0.999, logit-normal t;
#   * DIFF_STEPS denoiser steps (v1: 1000 at batch 4);
#   * at the same time, on the other core, the decoder is fine-tuned with the encoder frozen (DECODER_STEPS,
#     L1 + patch GAN on whole volumes; scripts/finetune_decoder.py): v1's decoder alone, fed real latents, is
#     30-36x the real-vs-real Frechet distance (too smooth), a floor no denoiser can get under. The latents do
#     not move, so the two runs are independent; the tuned decoder is written into the model at the end.
# Each of the two runs uses one thread (OMP_NUM_THREADS=1): on 2 cores that beats two runs fighting for both.
#
# Continue a run (same OUT): the script resumes from $MEDDIFF_HOME/models/default's checkpoint; DIFF_STEPS is
# passed on every call, so rerunning with a larger DIFF_STEPS extends the cosine schedule of a finished run.
# Continue the committed model (no checkpoint is bundled): DENOISER_FROM=meddiff_cli/bundled/default DIFF_STEPS=N
# rebuilds a checkpoint at its step from its sampling weights (scripts/continue_denoiser.py) and trains on to N; its
# own decoders and calibration are kept unless CT_DECODER_STEPS / MRI_DECODER_STEPS ask for more decoder steps.
# The 128^3 GPU model: PRESET=small SIZE=128 CT_SPACING=3 MRI_SPACING=1.5 DEVICE=cuda AE_FROM= (train stage 1 too).
# v3 for one short GPU lease (both stages from scratch, step counts fitted to the time): scripts/train_default_gpu.sh.
# The bundled model is v3-cpu (below, since the eleventh session of 2026-12-05). v2, bundled before it, was v2's run,
# then each modality's own decoder and CT's intensity calibration (the steps after the training loop below). How v2
# was made, in sessions, from committed weights and this script's pools (seeds 1000 / 2000), two runs side by side
# on one core each:
#   1. the v2 loop, stopped at denoiser step 5000 of DIFF_STEPS=7000 (its checkpoint was not kept);
#   2. the decoder loop below on a copy of that bundle (CT_DECODER_STEPS / MRI_DECODER_STEPS as defaulted here: each
#      total a rerun of the same --work, which continues with the cosine restarted towards the new total);
#   3. DENOISER_FROM=meddiff_cli/bundled/default (as of commit 45e5a8f) DIFF_STEPS=7000: the denoiser's last 2000
#      steps (fresh AdamW moments), the decoders of 2. then written into it;
#   4. bundle, CT calibration refit, quality_default.sh (the tail of this script);
#   5. DENOISER_FROM=meddiff_cli/bundled/default (as of commit 448bb58) DIFF_STEPS=10000: 3000 more denoiser steps
#      (the cosine restarted towards 10000), decoders and calibration kept; then 4.
#   6. as 5. with TIMESTEP_LOC=0.5 (the continued steps' training timesteps centred at t = 0.62, towards noise); it
#      replaced 5.'s model. Run before the option existed (the card's scheduler.loc set by hand before training),
#      recorded afterwards in the card's training.continuations as the option writes it; then 4.
#
# v3-cpu (the bundled model since 2026-12-05, eleventh session; trained over three sessions): v2's measurements put the rest of the gap in the
# autoencoder (its reconstructions blur the vertebrae into one band and cap CT's precision; docs/model.md), so v3
# trains a new one, then v2's stage 2 and own decoders on its latents. Stage 1 from scratch, on whole volumes
# (no crops: the decoder's GroupNorm sees what sampling decodes) with 8 latent channels, both cores:
#   AE_FROM= AE_STEPS=6000 AE_THREADS=2 TIMESTEP_LOC=0.5 DIFF_STEPS=10000 \
#   AE_SET="autoencoder.latent_channels=8 train.ae_patch_size=0 train.batch_size=1 train.warmup_steps=30" \
#   scripts/train_default.sh
# (stage 1 is its own call, so its batch size, crops and warm-up are not stage 2's; the denoiser's timesteps are
# centred at t = 0.62 from step 0, as v2's last 3000 steps were). Stage 2 and each modality's own decoder run side
# by side, one core each (decoders by hand: the scripted loop below runs them after stage 2). Sessions so far:
#   1. (ninth session) stage 1, 6000 steps (with MEDDIFF_HOME and name of its own, then copied to
#      $OUT/home/models/default); stage 2 to step 3234 of 10000 (its checkpoint kept); CT's own decoder beside it,
#      total 1000 and then 1200 steps of total 2000 (of the totals 1000 2000 3000): scripts/finetune_decoder.py
#      <stage-1 copy> $OUT/prep_ct --work $OUT/decoder_ct --steps 1000 --adv-weight 0.05 --adv-start 100
#      --disc-input clip-st --seed 3, then the same with --steps 2000.
#   2. (tenth session) stage 2 resumed to 10000 (`meddiff train $OUT/prep_ct $OUT/prep_mri --name default --stage
#      diffusion --diffusion-steps 10000 --workers 1 --device cpu --seed 0 --resume`, MEDDIFF_HOME=$OUT/home, one
#      thread); CT's own decoder resumed to total 2000, then total 3000; MRI's own decoder (the same command on
#      $OUT/prep_mri with --work $OUT/decoder_mri --modality mri) totals 2000 and 3000. Each total's state kept as
#      $OUT/decoder_<modality>_at<total>; written with --write MODEL --modality M, then bundle and CT calibration as
#      below. Not bundled: CT lost to v2 on the benchmark (docs/model.md, "Recipe v3-cpu").
#   3. (eleventh session) stage 2 resumed from its finished 10000 to 13000 (the same meddiff train command with
#      --diffusion-steps 13000 --resume: the cosine extended to the new total); CT's own decoder to total 4000
#      beside it (the same finetune_decoder.py command with --steps 4000). The bundle: a copy of
#      $OUT/home/models/default (checkpoint and previews removed), CT's decoder_ct_at4000 and MRI's
#      decoder_mri_at3000 written into it, scripts/bundle_model.py, CT calibration (the tail of this script); then
#      its label decoder: OUT=build/labels FROM=<that bundle> BUNDLE_TO=<that bundle> scripts/train_labels.sh
#      (run on the same bundle with the 10000-step denoiser: the label stage reads only autoencoder.safetensors,
#      byte-identical, and the training seed, so the label decoder is the same; merged by hand), then
#      scripts/bundle_model.py into meddiff_cli/bundled/default. Judged as v2 was (docs/model.md, "Recipe v3-cpu").
#      After bundling, the same decoder commands took MRI's own decoder to total 4000 and CT's to 5000
#      (decoder_<modality>_at<total>).
#   4. (twelfth session) the bundle as in 3. with decoder_ct_at5000 and decoder_mri_at4000 (and the same label
#      decoder, merged: it reads only the unchanged encoder); bundled, it beat 3.'s on three sampling seeds. The
#      denoiser resumed from 13000 to 16000 (the same command with --diffusion-steps 16000) was not better and is
#      not bundled; nor was the bundle with one more thousand decoder steps each (CT total 6000, MRI 5000: the same
#      decoder commands). Continue from $OUT/home/models/default (denoiser 16000, checkpoint) or $OUT/den_at13000.
#
# Training runs in chunks of at most CHUNK_S seconds (SIGTERM -> checkpoint, exit 130), resumed with --resume,
# so it fits short GPU leases: carry $MEDDIFF_HOME/models/default between chunks.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/default}
PRESET=${PRESET:-compact}
SIZE=${SIZE:-64}
CT_SPACING=${CT_SPACING:-6}
MRI_SPACING=${MRI_SPACING:-3.5}
COUNT=${COUNT:-480}           # training phantoms per modality (10 % held out for validation by train)
DEVICE=${DEVICE:-cpu}
CHUNK_S=${CHUNK_S:-540}
DIFF_STEPS=${DIFF_STEPS:-7000}
AE_FROM=${AE_FROM-meddiff_cli/bundled/default}   # empty: train the autoencoder too (AE_STEPS), in a call of its own
AE_STEPS=${AE_STEPS:-600}
AE_SET=${AE_SET:-}            # with AE_FROM empty: stage 1's own SECTION.KEY=VALUE overrides, space-separated
AE_THREADS=${AE_THREADS:-${OMP_NUM_THREADS:-1}}   # stage 1's threads (it runs alone; stage 2 shares the cores)
DECODER_STEPS=${DECODER_STEPS:-1500}   # 0: keep the reused decoder as it is
DENOISER_FROM=${DENOISER_FROM:-}   # a committed model whose denoiser training goes on (DIFF_STEPS: the new total)
TIMESTEP_LOC=${TIMESTEP_LOC:-}     # logit-normal location of the training timesteps: of the continued steps with
                                   # DENOISER_FROM, else of the new denoiser (train.timestep_loc; unset: the preset's 0)
# Each modality's own decoder: totals of successive runs of one --work folder (0: keep the model's decoder as it is)
own_default=$([ -n "$DENOISER_FROM" ] && echo 0 || echo "")
CT_DECODER_STEPS=${CT_DECODER_STEPS:-${own_default:-1000 2000 3000}}
MRI_DECODER_STEPS=${MRI_DECODER_STEPS:-${own_default:-2000 3000 4000}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORKERS=${WORKERS:-1}
export MEDDIFF_HOME=${MEDDIFF_HOME:-$OUT/home}
mkdir -p "$OUT"
SETTINGS=(--set train.batch_size=8 --set train.ema_decay=0.999 --set train.warmup_steps=200
          --set train.val_every=500 --set train.preview_every=1000 --set train.checkpoint_every=250
          --set "train.diffusion_steps=$DIFF_STEPS" --set "train.autoencoder_steps=$AE_STEPS")
[ -n "$TIMESTEP_LOC" ] && [ -z "$DENOISER_FROM" ] && SETTINGS+=(--set "train.timestep_loc=$TIMESTEP_LOC")

for modality in ct mri; do
  seed=$([ "$modality" = ct ] && echo 1000 || echo 2000)
  spacing=$([ "$modality" = ct ] && echo "$CT_SPACING" || echo "$MRI_SPACING")
  [ -f "$OUT/prep_$modality/manifest.json" ] || {
    meddiff phantom --modality "$modality" --count "$COUNT" --size "$SIZE" --seed "$seed" --out "$OUT/pool_$modality" --workers "$WORKERS" -q
    meddiff preprocess "$OUT/pool_$modality" --out "$OUT/prep_$modality" --size "$SIZE" --spacing "$spacing" -q > /dev/null; }
done

model="$MEDDIFF_HOME/models/default"
checkpoint_stage() { python -c 'import json, sys; print(json.load(open(sys.argv[1]))["stage"])' \
  "$model/checkpoint/state.json" 2>/dev/null || true; }
# train_in_chunks STAGE ARGS...: meddiff train --stage STAGE on the pools in CHUNK_S chunks, ARGS on every call and the
# array chunk_first (a new stage's settings) until the stage has a checkpoint of its own; from then on --resume.
train_in_chunks() {
  local name=$1 extra=("${chunk_first[@]}") status
  shift
  while true; do
    status=0
    # stderr (progress lines every 30 s, validation) goes to the log; stdout is the JSON summary
    timeout -s TERM "$CHUNK_S" meddiff train "$OUT/prep_ct" "$OUT/prep_mri" --name default --stage "$name" "$@" \
      --workers "$WORKERS" --device "$DEVICE" --seed 0 --json "${extra[@]}" > "$OUT/train.json" 2>> "$OUT/train.log" \
      || status=$?
    [ "$status" -eq 0 ] && return 0
    [ "$status" -eq 130 ] || [ "$status" -eq 124 ] || exit "$status"   # anything but "stopped by the chunk timer"
    if [ "$(checkpoint_stage)" = "$name" ]; then extra=(--resume); fi
  done
}
if [ -n "$DENOISER_FROM" ]; then
  [ -f "$model/model.json" ] || python scripts/continue_denoiser.py "$DENOISER_FROM" "$model" --total "$DIFF_STEPS" \
    ${TIMESTEP_LOC:+--timestep-loc "$TIMESTEP_LOC"}
  AE_FROM= DECODER_STEPS=0   # the autoencoder and its decoders are the committed model's
elif [ -n "$AE_FROM" ]; then
  [ -f "$model/model.json" ] || python scripts/reuse_autoencoder.py "$AE_FROM" "$model" --preset "$PRESET" "${SETTINGS[@]}"
else
  # stage 1 from scratch, alone: its batch size, crops and threads (AE_SET, AE_THREADS) are not stage 2's
  chunk_first=(--preset "$PRESET" "${SETTINGS[@]}")
  for setting in $AE_SET; do chunk_first+=(--set "$setting"); done
  if [ -f "$model/model.json" ]; then chunk_first=(--resume); fi   # finished: it says so and exits 0
  if [ ! -f "$model/model.json" ] || [ "$(checkpoint_stage)" = autoencoder ]; then
    OMP_NUM_THREADS=$AE_THREADS train_in_chunks autoencoder --ae-steps "$AE_STEPS"
  fi
fi
# Quality-vs-CPU-hours curve: keep the sampling weights every SNAPSHOT_EVERY denoiser steps (card + weights,
# copied only when the card's sha256 values match the files, i.e. never a half-saved pair).
SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-1000}
snapshot_watch() {
  while sleep 20; do
    python - "$model" "$OUT/snapshots" "$SNAPSHOT_EVERY" <<'PY' || true
import json, shutil, sys, tempfile
from pathlib import Path
from meddiff_cli.fsutil import sha256_file
model, root, every = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
card = json.loads((model / "model.json").read_text())
step = int(card["training"]["steps"]["diffusion"])
target = root / f"diffusion_{step:07d}"
if step == 0 or step % every or target.exists():
    sys.exit(0)
scratch = Path(tempfile.mkdtemp(dir=root.parent))
for name in ("model.json", "autoencoder.safetensors", "denoiser.safetensors"):
    shutil.copy2(model / name, scratch / name)
saved = json.loads((scratch / "model.json").read_text())
if all(sha256_file(scratch / f) == saved["files"][f] for f in ("autoencoder.safetensors", "denoiser.safetensors")):
    root.mkdir(parents=True, exist_ok=True)
    scratch.rename(target)
else:
    shutil.rmtree(scratch)
PY
  done
}
snapshot_watch & watcher=$!
trap 'kill $watcher 2>/dev/null' EXIT
decoder_job=
if [ -n "$AE_FROM" ] && [ "$DECODER_STEPS" -gt 0 ]; then
  # pool cases 100-179 of each modality stay out: on them the decoder's floor is measured (build/floor in the notes)
  python scripts/finetune_decoder.py "$AE_FROM" "$OUT/prep_ct" "$OUT/prep_mri" --work "$OUT/decoder_ft" \
    --steps "$DECODER_STEPS" --exclude 100-179 2>> "$OUT/decoder_ft.log" & decoder_job=$!
fi

# A resumed denoiser has its settings in its checkpoint; a new one takes SETTINGS (reused autoencoders and continued
# denoisers already have them in their card).
chunk_first=()
if [ "$(checkpoint_stage)" = diffusion ]; then chunk_first=(--resume)
elif [ -z "$AE_FROM" ] && [ -z "$DENOISER_FROM" ]; then chunk_first=("${SETTINGS[@]}"); fi
train_in_chunks diffusion --diffusion-steps "$DIFF_STEPS"

if [ -n "$decoder_job" ]; then
  wait "$decoder_job"
  python scripts/finetune_decoder.py "$AE_FROM" --work "$OUT/decoder_ft" --write "$model"
fi
# Each modality's own decoder (docs/model.md, "A decoder per modality"): the shared decoder fine-tuned on that
# modality's phantoms alone with a stronger, clipped patch GAN (tuned on both at once it made MRI better, CT worse).
# --modality: a model that already has the modality's own decoder (DENOISER_FROM) goes on from it.
for modality in ct mri; do
  totals=$([ "$modality" = ct ] && echo "$CT_DECODER_STEPS" || echo "$MRI_DECODER_STEPS")
  [ "$totals" != 0 ] || continue
  for steps in $totals; do
    python scripts/finetune_decoder.py "$model" "$OUT/prep_$modality" --work "$OUT/decoder_$modality" --steps "$steps" \
      --adv-weight 0.05 --adv-start 100 --disc-input clip-st --seed 3 --modality "$modality" 2>> "$OUT/decoder_$modality.log"
  done
  python scripts/finetune_decoder.py "$model" --work "$OUT/decoder_$modality" --write "$model" --modality "$modality"
done
python scripts/bundle_model.py "$model" meddiff_cli/bundled/default
# CT's intensity calibration (quantile map of CT's decoder's reconstructions onto real, 100 training cases; MRI gets
# none: measured worse with the shared decoder)
python scripts/fit_intensity_calibration.py meddiff_cli/bundled/default "$OUT/prep_ct" --modality ct --count 100
OUT="$OUT" benchmarks/quality_default.sh   # held-out phantoms, the quality table and the montage
