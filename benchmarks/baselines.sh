#!/usr/bin/env bash
# Baseline figures (issues 7-9) on the default model, as `lte bench` cells in OUT (so RESULTS.md picks them up).
# Long: about two and a half hours on a 2-core CPU.
# Usage: benchmarks/baselines.sh OUT_DIR [N_ROME] [N_GRACE] [N_KE]
set -euo pipefail
out=$1; n_rome=${2:-200}; n_grace=${3:-1000}; n_ke=${4:-200}
shared=${LTE_DATASETS:-../shared/datasets}  # run from the checkout, as lte itself looks for them
mkdir -p "$out"
python "$(dirname "$0")/rome_layers.py" --layers 2 4 6 8 --n 10 | tee "$out/rome-layers.txt"
lte bench --editors rome --datasets counterfact --modes single --n "$n_rome" --out "$out" --no-progress
lte bench --editors rome --datasets counterfact --modes sequential --n "$n_rome" --out "$out" --no-progress
python "$(dirname "$0")/grace_radius.py" | tee "$out/grace-radius.txt"
lte bench --editors grace --datasets counterfact --modes sequential --n "$n_grace" --budget 7200 --out "$out" --no-progress
lte train ke --data "$shared/counterfact_easyedit/counterfact-train.json" | tee "$out/ke-train.txt"
lte bench --editors ke --datasets counterfact --modes single --n "$n_ke" --out "$out" --no-progress
