#!/usr/bin/env bash
# The exact, rerunnable recipe of the bundled default model (meddiff_cli/bundled/default).
#
# Interim default (no GPU was available): preset `compact` at 64^3 trained on 2 CPU cores in ~40 min,
# one model for both modalities: chest CT at 6 mm (384 mm field of view), brain MRI at 3.5 mm (224 mm).
# The 128^3 GPU model: PRESET=small SIZE=128 CT_SPACING=3 MRI_SPACING=1.5 DEVICE=cuda scripts/train_default.sh
#
# Training runs in chunks of at most CHUNK_S seconds (SIGTERM -> checkpoint, exit 130), resumed with --resume,
# so it fits 10-minute GPU leases: carry $MEDDIFF_HOME/models/default between chunks.
set -euo pipefail

OUT=${OUT:-build/default}
PRESET=${PRESET:-compact}
SIZE=${SIZE:-64}
CT_SPACING=${CT_SPACING:-6}
MRI_SPACING=${MRI_SPACING:-3.5}
COUNT=${COUNT:-64}            # training phantoms per modality (10 % held out for validation by train)
HELDOUT=${HELDOUT:-100}       # evaluation phantoms per modality, never used in training
DEVICE=${DEVICE:-cpu}
CHUNK_S=${CHUNK_S:-540}
export MEDDIFF_HOME=${MEDDIFF_HOME:-$OUT/home}

for modality in ct mri; do
  seed=$([ "$modality" = ct ] && echo 1000 || echo 2000)
  spacing=$([ "$modality" = ct ] && echo "$CT_SPACING" || echo "$MRI_SPACING")
  meddiff phantom --modality "$modality" --count "$COUNT" --size "$SIZE" --seed "$seed" --out "$OUT/phantom_$modality" -q
  meddiff preprocess "$OUT/phantom_$modality" --out "$OUT/prep_$modality" --size "$SIZE" --spacing "$spacing" -q > /dev/null
  meddiff phantom --modality "$modality" --count "$HELDOUT" --size "$SIZE" --seed $((seed + 8000)) --out "$OUT/heldout_$modality" -q
  meddiff preprocess "$OUT/heldout_$modality" --out "$OUT/heldout_prep_$modality" --size "$SIZE" --spacing "$spacing" -q > /dev/null
done

resume=()
[ -f "$MEDDIFF_HOME/models/default/model.json" ] && resume=(--resume)
while true; do
  status=0
  timeout -s TERM "$CHUNK_S" meddiff train "$OUT/prep_ct" "$OUT/prep_mri" --name default --preset "$PRESET" \
    --workers 1 --device "$DEVICE" --seed 0 --json "${resume[@]}" > "$OUT/train.json" || status=$?
  [ "$status" -eq 0 ] && break
  [ "$status" -eq 130 ] || [ "$status" -eq 124 ] || exit "$status"   # anything but "stopped by the chunk timer"
  resume=(--resume)
done

python scripts/bundle_model.py "$MEDDIFF_HOME/models/default" meddiff_cli/bundled/default

# Quality against held-out phantoms (radiomics Fréchet distance vs the real-vs-real baseline, memorization).
for modality in ct mri; do
  meddiff sample --model default --modality "$modality" --count "$HELDOUT" --seed 1 --out "$OUT/synth_$modality" --preview -q
  meddiff evaluate "$OUT/heldout_prep_$modality" "$OUT/synth_$modality" --train "$OUT/prep_$modality" \
    --report "$OUT/report_$modality" --json > "$OUT/evaluate_$modality.json"
done
