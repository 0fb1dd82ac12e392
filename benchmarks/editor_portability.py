"""Parameter editors on another model family: each editor, built with the editor contract's small options, applies
three edits, changes the targets' scores and restores exactly (a check that its hooks and layer lookups are not
tied to SmolLM2; the options are the tiny model's, not tuned for the model given).

    python benchmarks/editor_portability.py MODEL_SPEC rome memit ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the contract's options live in tests/

from lte.core.models import load_model  # noqa: E402
from lte.core.settings import Settings  # noqa: E402
from lte.registry import build_editor, editor_config  # noqa: E402
from tests.test_editor_contract import EDITS, TINY_OPTIONS, edit_queries  # noqa: E402


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    spec, names = sys.argv[1], sys.argv[2:]
    settings = Settings.from_env(model=spec)
    loaded = load_model(spec, settings.home, **settings.load_options)
    queries, targets = edit_queries(EDITS), [e.target_new for e in EDITS]
    for name in names:
        start = time.time()
        editor = build_editor(name, settings, loaded, editor_config(name, TINY_OPTIONS[name]), batch_size=8)
        before = editor.score(queries, targets)
        editor.apply(EDITS)
        after = editor.score(queries, targets)
        editor.restore()
        exact = editor.score(queries, targets) == before
        gains = [round(a.mean_logprob - b.mean_logprob, 3) for a, b in zip(after, before)]
        print(f"{name}: target log-prob gain per edit {gains}, restored exactly {exact}, {time.time() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
