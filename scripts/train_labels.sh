#!/usr/bin/env bash
# The exact, rerunnable recipe of the bundled default model's label decoder (issue 17; docs/model.md,
# "Image + label pairs"). The autoencoder and denoiser stay as bundled (byte-identical); only
# label_decoder.safetensors is added:
#   * COUNT labelled phantoms per modality from the training seeds (1000 CT, 2000 MRI; never the held-out
#     9000/10000 of the benchmarks), preprocessed like the model's training data (64^3, 6 mm CT, 3.5 mm MRI);
#   * `meddiff train --stage labels` for STEPS steps (Dice + CE on posterior draws of the frozen encoder;
#     10 % of the cases held out for its validation Dice), bf16 autocast where the CPU has it;
#   * run in chunks of at most CHUNK_S seconds (SIGTERM -> checkpoint, exit 130) resumed with --resume.
# Continue a finished run for more steps: rerun with the same OUT and MORE=N (a further N steps from the
# trained decoder); the final bundle step copies the result into BUNDLE_TO (default meddiff_cli/bundled/default).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/labels}
FROM=${FROM:-meddiff_cli/bundled/default}
BUNDLE_TO=${BUNDLE_TO:-meddiff_cli/bundled/default}
COUNT=${COUNT:-200}
STEPS=${STEPS:-1200}
MORE=${MORE:-0}
SIZE=64
CHUNK_S=${CHUNK_S:-540}
DEVICE=${DEVICE:-cpu}
export MEDDIFF_HOME=${MEDDIFF_HOME:-$OUT/home}
mkdir -p "$OUT"

for modality in ct mri; do
  seed=$([ "$modality" = ct ] && echo 1000 || echo 2000)
  spacing=$([ "$modality" = ct ] && echo 6 || echo 3.5)
  [ -f "$OUT/prep_$modality/manifest.json" ] || {
    meddiff phantom --modality "$modality" --count "$COUNT" --size "$SIZE" --seed "$seed" --out "$OUT/pool_$modality" -q
    meddiff preprocess "$OUT/pool_$modality" --out "$OUT/prep_$modality" --size "$SIZE" --spacing "$spacing" -q > /dev/null; }
done

model="$MEDDIFF_HOME/models/default"
if [ ! -f "$model/model.json" ]; then
  mkdir -p "$model.tmp"
  cp "$FROM"/model.json "$FROM"/*.safetensors "$model.tmp"/   # the own decoders too: the card lists them
  mv "$model.tmp" "$model"
fi

steps=(--steps "$STEPS")
extra=()
if [ -f "$model/checkpoint_labels/state.json" ]; then extra=(--resume); steps=();
elif [ "$MORE" -gt 0 ]; then extra=(--resume); steps=(--steps "$MORE");
elif python -c "import json,sys; sys.exit(0 if json.load(open('$model/model.json')).get('labels') else 1)"; then
  echo "label decoder already trained ($model); MORE=N continues it" >&2; extra=(done); fi
if [ "${extra[*]}" != done ]; then
  while true; do
    status=0
    timeout -s TERM "$CHUNK_S" meddiff train "$OUT/prep_ct" "$OUT/prep_mri" --name default --stage labels \
      "${steps[@]}" --device "$DEVICE" --json "${extra[@]}" > "$OUT/train.json" 2>> "$OUT/train.log" || status=$?
    [ "$status" -eq 0 ] && break
    [ "$status" -eq 130 ] || [ "$status" -eq 124 ] || exit "$status"   # anything but "stopped by the chunk timer"
    extra=(--resume); steps=()
  done
fi
python scripts/bundle_model.py "$model" "$BUNDLE_TO"
