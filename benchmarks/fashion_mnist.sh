#!/usr/bin/env bash
# The longer comparison on Fashion-MNIST (issue 6): the plain small-image ResNet-20 against every channel and
# branch mechanism, one recipe, two seeds, then benchmarks/fashion_mnist.md with the command and the table.
#
# Usage:
#   benchmarks/fashion_mnist.sh    the settings below: 96 minutes on 2 CPU cores (2026-11-21), sized beforehand from
#                                  `visionattn bench --input 1x28x28 --batch 128 --precision bf16 --channels-last`
#   SUBSET=300 EPOCHS=1 MODELS=resnet20,se_resnet20 OUT=/tmp/fm REPORT=/tmp/fm.md benchmarks/fashion_mnist.sh
# Interrupted, the same command resumes (finished runs are read back; see `visionattn compare`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODELS=${MODELS:-resnet20,se_resnet20,eca_resnet20,cbam_resnet20,bam_resnet20,ge_theta_minus_resnet20,ge_theta_resnet20,ge_theta_plus_resnet20,sk_resnet20,splat_resnet20,condconv_resnet20,dynamic_conv_resnet20}
SUBSET=${SUBSET:-12000}
EPOCHS=${EPOCHS:-8}
SEEDS=${SEEDS:-1,2}
OUT=${OUT:-runs/fashion_mnist}
REPORT=${REPORT:-benchmarks/fashion_mnist.md}
ARGS=(--models "$MODELS" --data fashion-mnist --train-subset "$SUBSET" --epochs "$EPOCHS" --seeds "$SEEDS"
      --precision bf16 --channels-last --out "$OUT" --no-progress)
start=$(date +%s)
"$PY" -m visionattn compare "${ARGS[@]}" > "$OUT.log" 2>&1 || { tail -20 "$OUT.log"; exit 1; }
wall=$(( $(date +%s) - start ))
{
  echo "# Fashion-MNIST comparison"
  echo
  echo "Made by \`benchmarks/fashion_mnist.sh\` on $(date -u +%Y-%m-%d), $(nproc) CPU cores, ${wall} s wall time:"
  echo
  echo "    python -m visionattn compare ${ARGS[*]}"
  echo
  echo "ResNet-20 (small-image) with each mechanism; the default recipe (SGD momentum 0.9, lr 0.1, batch 128,"
  echo "1 warm-up epoch then cosine, weight decay 5e-4, random crop + flip) in bf16 autocast, on a class-balanced"
  echo "subset of ${SUBSET} training images for ${EPOCHS} epochs, seeds ${SEEDS}; top-1 on the full 10000-image test set."
  echo "Costs (training images/s and peak memory at batch 128, latency of one image) are measured in the same bf16 and"
  echo "channels-last setting. With two seeds a standard deviation is itself a rough estimate: read differences below"
  echo "about half a point as noise, whatever the verdict line says."
  echo
  cat "$OUT/compare.md"
} > "$REPORT"
echo "wrote $REPORT (${wall} s)"
