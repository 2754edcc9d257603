#!/usr/bin/env bash
# Reproduce the Fashion-MNIST result of the README's Training section: ResNet-20 (small-image) with the default recipe
# (15 epochs, SGD momentum 0.9, lr 0.1, 1 warm-up epoch then cosine, weight decay 5e-4, batch 128, random crop
# with 2-pixel padding + horizontal flip), in bf16 autocast with channels-last on the CPU.
#
# Usage: benchmarks/train_fashion_mnist.sh [RUN_DIR] [extra visionattn train options...]
#   e.g. benchmarks/train_fashion_mnist.sh runs/fmnist-resnet20 --precision fp32
# An interrupted run continues with:  .venv/bin/python -m visionattn train --resume RUN_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN_DIR=${1:-runs/fmnist-resnet20-$(date +%Y%m%d-%H%M%S)}
shift || true
start=$(date +%s)
"$PY" -m visionattn train --model resnet20 --data fashion-mnist --epochs 15 \
    --precision bf16 --channels-last --threads "${THREADS:-$(nproc)}" --run-dir "$RUN_DIR" "$@"
echo "wall time: $(( $(date +%s) - start )) s  ($(nproc) cores); result: $RUN_DIR/result.json"
cat "$RUN_DIR/result.json"
