#!/usr/bin/env bash
# Image + label pairs of a model with a label decoder (default: the bundled one), in one rerunnable command:
#
#   benchmarks/label_pairs.sh                   # OUT=build/pairs, MODEL=default
#
# 1. Agreement: N generated pairs per modality (`meddiff sample --with-labels`) and HELDOUT labelled phantoms
#    from seeds 9000 (CT) / 10000 (MRI), never used in training. `meddiff evaluate` trains its anatomy
#    segmenter on the REAL phantoms' labels, reads every generated image with it and reports the Dice against
#    the label map generated with that image, next to the same segmenter's Dice on held-out REAL volumes
#    (anatomy.label_agreement in $OUT/evaluate_<modality>.json).
# 2. augment-seg on the CT phantom corpus (scripts/augment_seg_phantoms.sh, K = 2, 4, 8, 3 seeds) with the
#    generated CT pairs: arms A, B, C as before, D = real + generated pairs, E = generated pairs only.
# 3. The README figure docs/label_pairs.png (real phantoms with labels above generated pairs).
# Parts whose outputs exist are skipped (delete them to redo one).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/pairs}
MODEL=${MODEL:-default}
N=${N:-32}
HELDOUT=${HELDOUT:-40}
SIZE=64
mkdir -p "$OUT"
spacing_of() { [ "$1" = ct ] && echo 6 || echo 3.5; }

for modality in ct mri; do
  seed=$([ "$modality" = ct ] && echo 9000 || echo 10000)
  [ -f "$OUT/heldout_prep_$modality/manifest.json" ] || {
    meddiff phantom --modality "$modality" --count "$HELDOUT" --size "$SIZE" --seed "$seed" --out "$OUT/heldout_$modality" -q
    meddiff preprocess "$OUT/heldout_$modality" --out "$OUT/heldout_prep_$modality" --size "$SIZE" \
      --spacing "$(spacing_of "$modality")" -q > /dev/null; }
  meddiff sample --model "$MODEL" --modality "$modality" --count "$N" --with-labels --out "$OUT/pairs_$modality" -q
  [ -f "$OUT/evaluate_$modality.json" ] || {
    meddiff evaluate "$OUT/heldout_prep_$modality" "$OUT/pairs_$modality" --size "$SIZE" \
      --spacing "$(spacing_of "$modality")" --anatomy --json > "$OUT/evaluate_$modality.tmp"
    mv "$OUT/evaluate_$modality.tmp" "$OUT/evaluate_$modality.json"; }
done

[ -f "$OUT/augment_seg/experiment/results.json" ] || \
  ARM_C=1 PAIRS="$OUT/pairs_ct" scripts/augment_seg_phantoms.sh "$OUT/augment_seg" > "$OUT/augment_seg.txt"

python benchmarks/pairs_figure.py "$OUT" docs/label_pairs.png
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["| modality | structure | Dice: segmenter(generated image) vs generated label | Dice: segmenter(held-out real) vs true label |",
         "|---|---|---|---|"]
for modality in ("ct", "mri"):
    agreement = json.loads((out / f"evaluate_{modality}.json").read_text())["anatomy"]["label_agreement"]
    for name, dice in agreement["dice"].items():
        real = agreement["real_reference_dice"].get(name)
        fmt = lambda v: "–" if v is None else f"{v:.3f}"
        lines.append(f"| {modality.upper()} | {name} | {fmt(dice)} | {fmt(real)} |")
(out / "agreement.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
