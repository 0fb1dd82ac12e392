#!/usr/bin/env bash
# LTE quality figures as `lte bench` cells in OUT: the aligned model with retrieval against its ablations
# (same retrieval with the base model; the oracle; the unedited model), then LTE with N_COUNTERFACT edits stored.
# Usage: benchmarks/lte_quality.sh ALIGNED_MODEL_DIR OUT_DIR [N_COUNTERFACT] [N_SMALL]
set -euo pipefail
aligned=$1; out=$2; n_cf=${3:-1000}; n_small=${4:-100}
mkdir -p "$out"
lte --model "$aligned" bench --editors lte lte-unaligned context none --datasets counterfact zsre \
  --modes sequential --n "$n_small" --out "$out" --no-progress
lte --model "$aligned" bench --editors lte --datasets counterfact --modes sequential --n "$n_cf" --budget 7200 \
  --out "$out" --no-progress
