import torch

from baselines.rome import ROMEConfig, ROMEEditor
from baselines.statistics import covariance_path
from lte.core.editor import Query
from lte.core.schema import Edit

EDIT = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa")
CFG = ROMEConfig(layer=1, cov_tokens=600, prefixes=2, prefix_tokens=4, v_steps=10, clamp_norm=50.0)


def test_update_is_rank_one_raises_the_target_and_restores_bit_exactly(tiny, isolated_home):
    editor = ROMEEditor(tiny, CFG, home=isolated_home)
    original = editor.projection.weight.detach().clone()
    before = editor.score([Query(EDIT.prompt)], [EDIT.target_new])[0].mean_logprob
    entry = editor.apply_one(EDIT)
    change = editor.projection.weight.detach() - original
    assert torch.linalg.matrix_rank(change).item() == 1
    assert entry.denominator > 0 and entry.update_norm > 0
    after = editor.score([Query(EDIT.prompt)], [EDIT.target_new])[0].mean_logprob
    assert after > before
    editor.restore()
    assert torch.equal(editor.projection.weight, original)


def test_covariance_is_cached_and_reused(tiny, isolated_home, monkeypatch):
    editor = ROMEEditor(tiny, CFG, home=isolated_home)
    cov = editor.cov
    path = covariance_path(tiny, CFG.layer, CFG.corpus, CFG.cov_tokens, isolated_home)
    assert path.is_file() and torch.load(path)["samples"] >= 1
    import baselines.statistics as statistics

    monkeypatch.setattr(statistics, "corpus_texts", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = ROMEEditor(tiny, CFG, home=isolated_home).cov
    assert torch.equal(cov, again)


def test_key_targets_the_subject_last_token(tiny):
    from baselines.common import subject_last_token
    from lte.core import prompting

    text = prompting.render(tiny.tokenizer, EDIT.prompt)
    index = subject_last_token(tiny.tokenizer, text, EDIT.subject)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny.tokenizer.decode(ids[: index + 1]).endswith("Needle")
