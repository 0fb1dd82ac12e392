"""The aligned model's half of scope: when an out-of-scope fact does reach the prompt, does the model keep its own
answer? For each case's same-subject locality prompts (another relation of the edited subject), the edit's own
statement is put into the prompt (an oracle injection: what a scope model that lets it through would do), and the
aligned model's greedy answer is compared with the unedited model's answer without any fact, as the harness scores
locality (gen_acc: the reference's first line found in the answer).

    python benchmarks/scope_oracle.py --model ALIGNED --datasets zsre wiki_counterfact wiki_recent --n 100

Prints, per dataset, the share of such prompts whose answer the aligned model keeps, and how often it gives the
injected edit's new answer instead.
"""

from __future__ import annotations

import argparse

from lte.core import prompting
from lte.core.catalog import dataset_path
from lte.core.datasets import load_cases
from lte.core.metrics import contains_answer, normalize
from lte.core.models import load_base, load_model
from lte.core.scoring import ModelRunner
from lte.core.settings import Settings
from lte.core.tables import SAME_SUBJECT_KINDS


def same_subject_probes(cases) -> list[tuple[str, str, str]]:
    """(prompt, injected statement, the edit's new answer) for every same-subject locality prompt."""
    return [(p.prompt, case.edit.statement, case.edit.target_new) for case in cases for p in case.locality
            if p.kind in SAME_SUBJECT_KINDS or case.edit.subject.lower() in p.prompt.lower()]


def first_line(text: str) -> str:
    return text.split("\n")[0].rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the aligned model (a folder from `lte align`)")
    parser.add_argument("--datasets", nargs="+", default=["zsre", "wiki_counterfact", "wiki_recent"])
    parser.add_argument("--n", type=int, default=100, help="cases per dataset")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    settings = Settings.from_env(model=args.model)
    aligned = load_model(args.model, settings.home)
    base = load_base(aligned, settings.home)
    runners = [ModelRunner(m.model, m.tokenizer, 16, m.context) for m in (aligned, base)]
    print(f"{'dataset':<18}{'prompts':>8}{'kept':>8}{'new answer':>12}  (aligned model, edit injected)")
    for label, path in (dataset_path(name, settings) for name in args.datasets):
        probes = same_subject_probes(load_cases(path)[: args.n])
        tokenizer = aligned.tokenizer
        with_fact = runners[0].generate([prompting.render(tokenizer, q, [s]) for q, s, _ in probes],
                                        args.max_new_tokens)
        reference = runners[1].generate([prompting.render(base.tokenizer, q) for q, _, _ in probes],
                                        args.max_new_tokens)
        rows = [(first_line(r), g, new) for r, g, (_, _, new) in zip(reference, with_fact, probes)
                if normalize(first_line(r))]
        kept = sum(contains_answer(g, [r]) for r, g, _ in rows) / max(len(rows), 1)
        took_new = sum(contains_answer(g, [new]) for _, g, new in rows) / max(len(rows), 1)
        print(f"{label:<18}{len(rows):>8}{kept:>8.3f}{took_new:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
