#!/usr/bin/env bash
# The README's Deploy figures (issue 7): two L1 runs on the X-ray data, their exports, a pruning
# sweep, and the serving load test. Everything on ../shared/data/pneumoniamnist_balanced.npz,
# seed 42. About 25 minutes on 2 busy CPU cores. Usage: benchmarks/deploy_figures.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
L=.venv/bin/l1cnn
DATA=../shared/data/pneumoniamnist_balanced.npz
R=${1:-runs/deploy}
mkdir -p "$R"
[ -f "$R/xray-penalty/metrics.json" ] || $L train $DATA --set l1_lambda=0.001 --set seed=42 \
    --quiet --out "$R/xray-penalty" --overwrite
[ -f "$R/xray-proximal/metrics.json" ] || $L train $DATA --set l1_lambda=0.01 \
    --set l1_mode=proximal --set seed=42 --quiet --out "$R/xray-proximal" --overwrite
for f in savedmodel onnx litert; do $L export "$R/xray-penalty" --format $f --overwrite; done
for q in float16 int8; do
    $L export "$R/xray-penalty" --format litert --quantize $q --overwrite
done
for run in xray-penalty xray-proximal; do
    for s in 0.5 0.8 0.9 0.95 0.99; do
        $L prune "$R/$run" --sparsity $s --quiet --overwrite
    done
    for s in 0.9 0.95 0.99; do
        $L prune "$R/$run" --sparsity $s --fine-tune-epochs 3 --quiet --overwrite \
            --out "$R/$run-pruned-s$s-ft3"
    done
    $L prune "$R/$run" --min-magnitude 1e-3 --quiet --overwrite
done
.venv/bin/python benchmarks/prune_table.py "$R"
.venv/bin/python benchmarks/serve_load.py "$R/xray-penalty" --requests 2000 --clients 8
