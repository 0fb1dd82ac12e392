#!/usr/bin/env bash
# Baseline figures (issues 7-9) with the shared harness on the default model. Long: hours on a 2-core CPU.
# Usage: benchmarks/baselines.sh OUT_DIR [N_ROME] [N_GRACE] [N_KE]
set -euo pipefail
out=$1; n_rome=${2:-200}; n_grace=${3:-1000}; n_ke=${4:-200}
shared=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets}
cf=$shared/counterfact_easyedit/counterfact-edit.json
mkdir -p "$out"
. "$(dirname "$0")/common.sh"
python "$(dirname "$0")/rome_layers.py" --n 10 | tee "$out/rome-layers.txt"
run eval --editor rome --dataset "$cf" --limit "$n_rome" --mode single --out "$out/rome-single.json"
run eval --editor rome --dataset "$cf" --limit "$n_rome" --mode sequential --out "$out/rome-sequential.json"
python "$(dirname "$0")/grace_radius.py" | tee "$out/grace-radius.txt"
run eval --editor grace --dataset "$cf" --limit "$n_grace" --mode sequential --out "$out/grace-sequential.json"
lte train ke --data "$shared/counterfact_easyedit/counterfact-train.json" --steps 1000 | tee "$out/ke-train.txt"
run eval --editor ke --dataset "$cf" --limit "$n_ke" --mode single --out "$out/ke-single.json"
