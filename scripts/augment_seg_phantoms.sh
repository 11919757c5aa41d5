#!/usr/bin/env bash
# The augment-seg experiment on the built-in CT phantoms: does self-supervised pre-training on "synthetic"
# volumes help a 3D UNet segment lungs / heart / bone from K = 2, 4, 8 labelled volumes?
#
# The "synthetic" volumes here are OTHER phantoms (a different corpus seed, so different subjects), not samples
# from a trained meddiff model: pass SYNTHETIC=/path/to/meddiff-sample-output to use real model samples.
# Phantoms are generated without lung nodules: at 32^3-48^3 (8-12 mm voxels) a nodule is a voxel or two.
#
# Usage: scripts/augment_seg_phantoms.sh [WORK_DIR]      (defaults below; override with environment variables)
#   SIZE=32 EPOCHS=40 PRETRAIN_EPOCHS=40 SEEDS=3 N_LABELLED=2,4,8 DEVICE=auto ARM_C=0 scripts/augment_seg_phantoms.sh
# PAIRS=DIR (a `meddiff sample --with-labels` folder) adds arms D (real + generated pairs) and E (pairs only).
# Rerunning reuses the phantom corpora (meddiff phantom resumes) and replaces the experiment's outputs.
set -euo pipefail

WORK=${1:-augment-seg-phantoms}
MODALITY=${MODALITY:-ct}
PHANTOM_SIZE=${PHANTOM_SIZE:-64}
N_REAL=${N_REAL:-16}
N_SYNTHETIC=${N_SYNTHETIC:-8}
SIZE=${SIZE:-32}
EPOCHS=${EPOCHS:-40}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-40}
SEEDS=${SEEDS:-3}
N_LABELLED=${N_LABELLED:-2,4,8}
DEVICE=${DEVICE:-auto}
ARM_C=${ARM_C:-0}

NODULES=()
[ "$MODALITY" = ct ] && NODULES=(--no-nodules)
meddiff phantom --modality "$MODALITY" --count "$N_REAL" --size "$PHANTOM_SIZE" --seed 1 "${NODULES[@]}" \
    --out "$WORK/real" -q
if [ -z "${SYNTHETIC:-}" ]; then
    meddiff phantom --modality "$MODALITY" --count "$N_SYNTHETIC" --size "$PHANTOM_SIZE" --seed 2 "${NODULES[@]}" \
        --out "$WORK/synthetic" -q
    SYNTHETIC="$WORK/synthetic"
fi

EXTRA=()
[ "$ARM_C" = 1 ] && EXTRA=(--arm-c)
[ -n "${PAIRS:-}" ] && EXTRA+=(--pairs "$PAIRS")
# 25 % of the real phantoms (4 of 16) are the fixed test set; the other 12 are the labelled pool.
meddiff augment-seg --images "$WORK/real/images" --labels "$WORK/real/labels" --synthetic "$SYNTHETIC" \
    --test-fraction 0.25 --n-labelled "$N_LABELLED" --seeds "$SEEDS" --size "$SIZE" \
    --epochs "$EPOCHS" --pretrain-epochs "$PRETRAIN_EPOCHS" --device "$DEVICE" "${EXTRA[@]}" \
    --out "$WORK/experiment"
