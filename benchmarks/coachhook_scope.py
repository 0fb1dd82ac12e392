"""CoachHooK's scope test on the default model: after `--cases` CounterFact edits applied in batches of `--batch`,
how often the hook acts (some token's within-sequence z-score ≥ α at some edited layer) on the edit prompts, their
paraphrases, the cases' neighbourhood prompts (other subjects, same relation) and prompts about the edited subject
with another relation ("… was born in", made from each subject). Also α per layer after adapting, and the bytes the
edits are held in (constant in the number of edits). Written for results/coachhook-scope.txt.

    LTE_HOME=... python benchmarks/coachhook_scope.py --data ../shared/datasets/counterfact/counterfact.json
"""

from __future__ import annotations

import argparse

from baselines.coachhook import CoachHooKEditor
from lte.core.datasets import load_cases
from lte.core.models import load_model
from lte.core.settings import Settings
from lte.registry import editor_config

OTHER_RELATIONS = ["{} was born in", "The official language of {} is", "{} is a member of"]
UNRELATED_SUBJECTS = ["Paris", "Tom Hanks", "Google"]


def rate(editor: CoachHooKEditor, prompts: list[str]) -> str:
    fired = editor.fires(prompts)
    return f"{sum(fired) / max(len(fired), 1):.3f} (n={len(fired)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--alpha-rule", default="lower", help="CoachHooKConfig.alpha_rule")
    args = parser.parse_args()
    settings = Settings.from_env()
    loaded = load_model(settings.model, settings.home)
    editor = CoachHooKEditor(loaded, editor_config("coachhook", {"alpha_rule": args.alpha_rule}), settings.home)
    cases = load_cases(args.data)[: args.cases]
    for start in range(0, len(cases), args.batch):
        editor.apply([case.edit for case in cases[start:start + args.batch]])
        print(f"after {start + args.batch} edits: alpha {editor.stats()['alpha']}, held {editor.held_bytes():,} bytes")
    stats = editor.stats()
    print(f"edit prompts fired before alpha adapted (mean over batches): {stats['edit_fire_rate_before_adapt']}")
    print(f"alpha rule {args.alpha_rule}; fire rate (share of prompts on which the hook acts):")
    print(f"  edit prompts        {rate(editor, [c.edit.prompt for c in cases])}")
    print(f"  paraphrases         {rate(editor, [p.prompt for c in cases for p in c.paraphrases])}")
    print(f"  neighbourhood       {rate(editor, [p.prompt for c in cases for p in c.locality])}")
    print(f"  same subject, other {rate(editor, [t.format(c.edit.subject) for c in cases for t in OTHER_RELATIONS])}")
    print(f"  unrelated subjects  {rate(editor, [t.format(s) for t in OTHER_RELATIONS for s in UNRELATED_SUBJECTS])}")


if __name__ == "__main__":
    main()
