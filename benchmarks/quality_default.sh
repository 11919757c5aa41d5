#!/usr/bin/env bash
# Rebuild the bundled model's quality table, montage and quality-vs-training-time curve in one command:
#
#   benchmarks/quality_default.sh                       # the bundled default model, OUT=build/default
#   MODEL=/path/to/model OUT=build/x benchmarks/quality_default.sh
#
# Real data: HELDOUT phantoms per modality from seeds 9000 (CT) and 10000 (MRI), never used in training
# (scripts/train_default.sh draws its pool from seeds 1000 and 2000). Synthetic: N samples per modality.
# `meddiff evaluate` compares them on the model's own grid (64^3; CT 6 mm, MRI 3.5 mm), with the training
# pool for the memorization check; benchmarks/quality_report.py turns the reports into the README table,
# the anatomy check (bone on the posterior midline where real phantoms have their spine), the montage
# (docs/default_model_samples.png) and the curve over training snapshots ($OUT/snapshots, if the
# training run kept them; CURVE_N samples per modality each). REFERENCE=MODEL adds an earlier model's row;
# Each part is skipped when an earlier run of this script finished it (delete $OUT/quality to start over).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/default}
MODEL=${MODEL:-default}
N=${N:-100}
HELDOUT=${HELDOUT:-100}
CURVE_N=${CURVE_N:-32}
SIZE=64
Q="$OUT/quality"
mkdir -p "$Q"

spacing_of() { [ "$1" = ct ] && echo 6 || echo 3.5; }
for modality in ct mri; do
  seed=$([ "$modality" = ct ] && echo 9000 || echo 10000)
  [ -f "$OUT/heldout_prep_$modality/manifest.json" ] || {
    meddiff phantom --modality "$modality" --count "$HELDOUT" --size "$SIZE" --seed "$seed" --out "$OUT/heldout_$modality" -q
    meddiff preprocess "$OUT/heldout_$modality" --out "$OUT/heldout_prep_$modality" --size "$SIZE" --spacing "$(spacing_of "$modality")" -q > /dev/null; }
done

evaluate_model() {  # MODEL LABEL COUNT EXTRA...: sample COUNT volumes per modality and evaluate them
  local model=$1 label=$2 count=$3; shift 3
  for modality in ct mri; do
    local synth="$Q/$label/synth_$modality" train=()
    [ -f "$OUT/prep_$modality/manifest.json" ] && train=(--train "$OUT/prep_$modality")  # memorization check
    rm -rf "$synth"   # this script's own output from an earlier, unfinished run
    meddiff sample --model "$model" --modality "$modality" --count "$count" --seed 1 --out "$synth" -q
    meddiff evaluate "$OUT/heldout_prep_$modality" "$synth" --size "$SIZE" --spacing "$(spacing_of "$modality")" \
      --json -q "${train[@]}" "$@" > "$Q/$label/evaluate_$modality.json"
  done
}

run_once() {  # MODEL LABEL COUNT EXTRA...: evaluate_model unless an earlier run of this script finished it
  local label=$2
  [ -s "$Q/$label/evaluate_mri.json" ] && return 0
  mkdir -p "$Q/$label" && evaluate_model "$@"
}
run_once "$MODEL" final "$N"
# REFERENCE (optional): an earlier model evaluated the same way, e.g. the previous bundled default.
[ -n "${REFERENCE:-}" ] && run_once "$REFERENCE" reference "$N" --no-anatomy
for snapshot in "$OUT"/snapshots/diffusion_*; do   # the curve: fewer samples, no anatomy model, no bootstrap
  [ -d "$snapshot" ] && run_once "$snapshot" "curve/$(basename "$snapshot")" "$CURVE_N" --bootstrap 0 --no-anatomy
done
python benchmarks/quality_report.py "$OUT" "$MODEL"
