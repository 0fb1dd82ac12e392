"""FT-L on the tiny model: the L∞ bound around the original weights holds across calls, the edit is learnt, and
restore is exact (the contract suite runs `ft` through every mode as well)."""

import pytest
import torch

from baselines.ft import FTConfig, FTEditor
from lte.core.editor import Query
from lte.core.errors import ConfigError
from lte.core.schema import Edit

EDITS = [Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa"),
         Edit(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is", target_new="Japanese")]


def weights(editor: FTEditor) -> list[torch.Tensor]:
    return [w.detach().clone() for w in editor.weights]


def test_each_weight_stays_within_its_bound_of_the_original_across_calls_and_restores_exactly(tiny):
    editor = FTEditor(tiny, FTConfig(layers=(1, 2), steps=8, lr=0.05, norm_bound=0.01))
    before = weights(editor)
    query = [Query(EDITS[0].prompt)]
    unedited = editor.score(query, ["Goa"])[0].mean_logprob
    editor.apply([EDITS[0]])
    assert editor.score(query, ["Goa"])[0].mean_logprob > unedited + 0.5  # learnt within the bound (6.08 → 5.37)
    editor.apply([EDITS[1]])  # a second call, as in sequential mode: the bound is around the original weights
    drift = [float((w - b).abs().max()) for w, b in zip(weights(editor), before)]
    assert all(0.0099 < d <= 0.01 + 1e-7 for d in drift)  # the bound is reached and never passed
    assert editor.stats()["calls"] == 2 and editor.stats()["max_drift"] <= 0.01 + 1e-7
    editor.restore()
    assert all(torch.equal(w, b) for w, b in zip(weights(editor), before))


def test_without_the_bound_the_weights_move_further(tiny):
    """The clip is what holds the drift: with a bound too large to bind, the same steps move weights more."""
    loose = FTEditor(tiny, FTConfig(layers=(1,), steps=8, lr=0.05, norm_bound=10.0))
    before = weights(loose)
    loose.apply(EDITS)
    moved = float((weights(loose)[0] - before[0]).abs().max())
    loose.restore()
    assert moved > 0.05


@pytest.mark.parametrize("options, message", [({"layers": (99,)}, "out of range"),
                                              ({"layers": (1,), "norm_bound": 0.0}, "norm_bound")])
def test_bad_options_are_refused_by_name(tiny, options, message):
    with pytest.raises(ConfigError, match=message):
        FTEditor(tiny, FTConfig(**options))
