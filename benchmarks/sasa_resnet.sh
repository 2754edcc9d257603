#!/usr/bin/env bash
# End to end at 224 x 224 (issue 7): SASA-ResNet-26 (conv stem, and attention stem) against the conv ResNet-26 of
# the paper's layout [1, 2, 4, 1], batch 8, 1000 classes, fp32: inference and training-step images/s, peak memory.
# Usage: benchmarks/sasa_resnet.sh [extra `visionattn bench` options, e.g. --threads 2 --reps 7]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m visionattn bench --models resnet26_sasa_conv,sasa_resnet26,sasa_stem_resnet26 --input 3x224x224 \
    --batch 8 --warmup 1 --reps 5 "$@"
