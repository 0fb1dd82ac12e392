#!/usr/bin/env bash
# The edit store as a new user meets it: 10,000 CounterFact edits through `lte edit`, first in an embedded
# store, then against a Chroma server on loopback. Prints timings, counts, searches and the refusal of a bad file.
# Usage: benchmarks/edit_store_cli.sh WORK_DIR [PORT]
set -uo pipefail
work=$1; port=${2:-8765}
shared=${LTE_DATASETS:-../shared/datasets}  # run from the checkout, as lte itself looks for them
cf=$shared/counterfact_easyedit/counterfact-edit.json
mkdir -p "$work"
python - "$work/broken.jsonl" <<'PY'
import json, sys
rows = [{"subject": "Tower A", "prompt": "Tower A is located in", "target_new": "Goa"},
        {"subject": "Tower B", "prompt": "Tower B is located in"},  # line 2: no target_new
        {"subject": "Tower C", "prompt": "Tower C is located in", "target_new": "Lima"}]
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY

trial() {
  echo "== $1"; shift
  local start=$SECONDS
  lte "$@" edit add "$cf" 2>&1 | tr '\r' '\n' | grep -E "adding edits: 100%|^added" | tail -2
  echo "   first add: $((SECONDS - start)) s"
  echo "   current: $(lte "$@" edit count), with history: $(lte "$@" edit count --history)"
  start=$SECONDS
  lte "$@" edit add "$cf" 2>&1 | tr '\r' '\n' | tail -1
  echo "   re-add: $((SECONDS - start)) s"
  lte "$@" edit search "Where is Danielle Darrieux from?" 2>&1 | grep -v "Loading weights" | head -1
  lte "$@" edit search "What language does Danielle Darrieux speak natively?" 2>&1 | grep -v "Loading weights" | head -1
  lte "$@" edit add "$work/broken.jsonl" 2>&1 | tail -1
  echo "   exit status ${PIPESTATUS[0]}; current afterwards: $(lte "$@" edit count)"
}

rm -rf "$work/store" "$work/chroma-db"
trial "embedded store" --store "$work/store"
chroma run --path "$work/chroma-db" --host 127.0.0.1 --port "$port" > "$work/chroma.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 30); do curl -sf "http://127.0.0.1:$port/api/v2/heartbeat" > /dev/null && break; sleep 1; done
trial "chroma server on loopback" --chroma-url "http://127.0.0.1:$port"
