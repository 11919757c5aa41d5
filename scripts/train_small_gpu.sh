#!/usr/bin/env bash
# Rerunnable GPU benchmark: phantom CT corpus -> preprocess -> train the `small` preset.
# Reports the autoencoder's reconstruction PSNR on the held-out phantoms (validation split) and it/s per stage.
#
#   scripts/train_small_gpu.sh                      # defaults below, one GPU
#   N=60 SIZE=64 AE_STEPS=3000 DIFF_STEPS=6000 scripts/train_small_gpu.sh
#   NPROC=4 scripts/train_small_gpu.sh              # DDP with torchrun on 4 GPUs
set -euo pipefail

OUT=${OUT:-bench/train_small}
N=${N:-40}                    # phantom cases (10 % held out for validation, at least 1)
SIZE=${SIZE:-64}              # voxels per axis (multiple of 16)
AE_STEPS=${AE_STEPS:-1500}
DIFF_STEPS=${DIFF_STEPS:-1500}
BATCH=${BATCH:-4}
WORKERS=${WORKERS:-8}
NPROC=${NPROC:-1}
NAME=${NAME:-bench-small}
PRESET=${PRESET:-small}       # PRESET=tiny DEVICE=cpu N=4 SIZE=32 AE_STEPS=2 DIFF_STEPS=2 WORKERS=1: CPU smoke run
DEVICE=${DEVICE:-cuda}
export MEDDIFF_HOME=${MEDDIFF_HOME:-$OUT/home}

mkdir -p "$OUT"
meddiff phantom --modality ct --count "$N" --size "$SIZE" --seed 0 --out "$OUT/phantom_ct" --workers "$WORKERS" -q
meddiff preprocess "$OUT/phantom_ct/images" --out "$OUT/prep_ct" --modality ct --size "$SIZE" --workers "$WORKERS" -q > /dev/null
rm -rf "$MEDDIFF_HOME/models/$NAME"   # a benchmark starts from scratch

ARGS=("$OUT/prep_ct" --name "$NAME" --preset "$PRESET" --ae-steps "$AE_STEPS" --diffusion-steps "$DIFF_STEPS"
      --batch-size "$BATCH" --workers "$WORKERS" --device "$DEVICE" --json)
if [ "$NPROC" -gt 1 ]; then
  torchrun --standalone --nproc_per_node="$NPROC" -m meddiff_cli train "${ARGS[@]}" > "$OUT/train.json"
else
  meddiff train "${ARGS[@]}" > "$OUT/train.json"
fi

python - "$MEDDIFF_HOME/models/$NAME/model.json" <<'PY'
import json, sys
card = json.load(open(sys.argv[1]))
t, m = card["training"], card["metrics"]
print(f"model folder: {sys.argv[1].rsplit('/', 1)[0]}")
print(f"cases: {t['cases']}  world size: {t['world_size']}  global batch: {t['global_batch_size']}  "
      f"precision: {t['mixed_precision']}")
for stage in ("autoencoder", "diffusion"):
    steps, seconds = t["steps"][stage], t["duration_s"][stage]
    print(f"{stage:12s} {steps:6d} steps in {seconds:8.1f} s = {steps / max(seconds, 1e-9):6.2f} it/s "
          f"(incl. validation/checkpoints; skipped non-finite steps: {t['skipped_steps']})")
print(f"autoencoder held-out L1 {m.get('autoencoder_val_l1')}  PSNR {m.get('autoencoder_val_psnr_db')} dB "
      f"(over [-1, 1], i.e. the CT window); diffusion val loss {m.get('diffusion_val_loss')}")
PY
