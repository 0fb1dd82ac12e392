#!/usr/bin/env bash
# LTE quality figures (issue 5): the aligned model with retrieval against its ablations, on the shared datasets.
# Usage: benchmarks/lte_quality.sh ALIGNED_MODEL_DIR OUT_DIR [N_COUNTERFACT] [N_SMALL]
# For a retrieval store, batch mode (insert all N edits, then score) ends in exactly the state sequential mode ends
# in (same inserts, same order, same supersede rule), so the end-of-run scores are the same; batch skips the
# per-edit "immediate" scoring, which a store does not need.
set -euo pipefail
aligned=$1; out=$2; n_cf=${3:-1000}; n_small=${4:-200}
shared=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets}
cf=$shared/counterfact_easyedit/counterfact-edit.json
zsre=$shared/knowedit/ZsRE-test-all.json
mkdir -p "$out"
. "$(dirname "$0")/common.sh"
for editor in lte lte-unaligned context none; do
  run --model "$aligned" eval --editor $editor --dataset "$cf" --limit "$n_small" --mode batch \
    --out "$out/$editor-cf-$n_small.json"
done
for editor in lte lte-unaligned; do
  run --model "$aligned" eval --editor $editor --dataset "$zsre" --limit "$n_small" --mode batch \
    --out "$out/$editor-zsre-$n_small.json"
done
run --model "$aligned" eval --editor lte --dataset "$cf" --limit "$n_cf" --mode batch --out "$out/lte-cf-$n_cf.json"
