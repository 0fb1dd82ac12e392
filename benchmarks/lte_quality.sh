#!/usr/bin/env bash
# LTE quality figures (issue 5): the aligned model with retrieval vs the ablations, on the shared datasets.
# Usage: benchmarks/lte_quality.sh ALIGNED_MODEL_DIR OUT_DIR [N_COUNTERFACT] [N_ZSRE] [N_ABLATION]
set -euo pipefail
aligned=$1; out=$2; n_cf=${3:-1000}; n_zsre=${4:-300}; n_ablation=${5:-300}
shared=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets}
cf=$shared/counterfact_easyedit/counterfact-edit.json
zsre=$shared/knowedit/ZsRE-test-all.json
mkdir -p "$out"
run() {
  local start=$SECONDS
  echo "+ lte $*" | tee -a "$out/commands.txt"
  lte "$@" --no-progress
  echo "  ($((SECONDS - start)) s)" | tee -a "$out/commands.txt"
}
run --model "$aligned" eval --editor lte --dataset "$cf" --limit "$n_cf" --mode sequential --out "$out/lte-cf.json"
run --model "$aligned" eval --editor lte --dataset "$zsre" --limit "$n_zsre" --mode sequential --out "$out/lte-zsre.json"
run --model "$aligned" eval --editor lte-unaligned --dataset "$cf" --limit "$n_ablation" --mode sequential \
  --out "$out/lte-unaligned-cf.json"
run --model "$aligned" eval --editor lte --dataset "$cf" --limit "$n_ablation" --mode sequential \
  --out "$out/lte-cf-small.json"
run eval --editor context --dataset "$cf" --limit "$n_ablation" --mode batch --out "$out/context-cf.json"
run eval --editor none --dataset "$cf" --limit "$n_ablation" --mode batch --out "$out/none-cf.json"
