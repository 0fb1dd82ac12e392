"""Which prompts of the general-ability probe receive an edit from LTE's store, and which edit: the false passes
behind LTE's general-probe figures (a prompt that receives an edit is answered by the aligned model with it).

    python benchmarks/scope_general.py --model ~/.cache/lte/aligned/smollm2-135m-instruct --n 100
    python benchmarks/scope_general.py --scope SCOPE_DIR --n 100     # another scope model (no aligned model needed)

Stores the first N CounterFact edits (as the bench's CounterFact N cell does), then asks the probe's 195 prompts
and 12 passage prompts through the scope model. Needs the datasets folder ($LTE_DATASETS).
"""

from __future__ import annotations

import argparse
import tempfile

from lte.core.catalog import dataset_path
from lte.core.datasets import load_cases
from lte.core.editor import Query
from lte.core.general import passages, probe_prompts
from lte.core.models import load_model
from lte.core.settings import Settings
from lte.registry import build_editor, editor_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the aligned model folder (with its scope model); default the bundled one")
    parser.add_argument("--scope", help="a scope model folder to use instead of the model's own")
    parser.add_argument("--n", type=int, default=100, help="CounterFact edits stored")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings.from_env(model=args.model, store=home)
        config = editor_config("lte", {"scope": args.scope} if args.scope else {})
        editor = build_editor("lte", settings, load_model(settings.model, settings.home, **settings.load_options),
                              config)
        edits = [edit for case in load_cases(dataset_path("counterfact", settings)[1])[: args.n] for edit in case.edits]
        editor.apply(edits)
        statements = {edit.id: edit.statement for edit in edits}
        kinds = [("probe", p) for p in probe_prompts()] + [("passage", p) for p, _ in passages()]
        passed = editor.passed_edits([Query(prompt) for _, prompt in kinds])
        editor.restore()
    for kind in ("probe", "passage"):
        rows = [(prompt, ids) for (k, prompt), ids in zip(kinds, passed) if k == kind]
        print(f"{kind} prompts that received an edit: {sum(bool(ids) for _, ids in rows)} of {len(rows)}")
        for prompt, ids in rows:
            if ids:
                print(f"    {prompt[:72]!r} <- " + "; ".join(statements[i] for i in ids))


if __name__ == "__main__":
    main()
