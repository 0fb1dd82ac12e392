import pytest
import torch

from baselines.grace import Codebook, GRACEConfig, GRACEEditor, update_codebook
from lte.core.editor import Query
from lte.core.schema import Edit


def test_add_expand_split_rules_on_hand_built_keys():
    book = Codebook(2, 2)
    value = torch.zeros(2)
    assert update_codebook(book, torch.tensor([0.0, 0.0]), value, target=7, eps_init=1.0) == "add"
    assert update_codebook(book, torch.tensor([10.0, 0.0]), value, target=7, eps_init=1.0) == "add"  # far away
    assert update_codebook(book, torch.tensor([1.5, 0.0]), value, target=7, eps_init=1.0) == "expand"
    assert book.radii[0].item() == 1.5 and len(book) == 2
    assert update_codebook(book, torch.tensor([0.0, 1.0]), value, target=9, eps_init=1.0) == "split"
    assert len(book) == 3 and book.radii[0].item() == 0.5 and book.radii[2].item() == 0.5


@pytest.fixture
def grace(tiny):
    """A GRACE editor on the shared tiny model, always unwrapped afterwards so other tests see the plain model."""
    editors = []

    def make(**options):
        editors.append(GRACEEditor(tiny, GRACEConfig(layer=2, **options)))
        return editors[-1]

    yield make
    for editor in editors:
        editor.restore()


def test_edit_is_generated_freely_and_nothing_changes_outside_the_radius(grace):
    editor = grace(value_steps=80)
    edit = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa Velha")
    unrelated = [Query("Who wrote Hamlet?"), Query("The capital of Peru is")]
    before = editor.generate(unrelated, 5), editor.score(unrelated, ["x", "y"])
    editor.apply([edit])
    assert len(editor.adaptor.codebook) >= 2  # one entry per answer token
    assert editor.stats() == {"codebook_entries": len(editor.adaptor.codebook)}
    assert editor.generate([Query(edit.prompt)], 8)[0].strip().startswith("Goa Velha")
    assert editor.score([Query(edit.prompt)], [edit.target_new])[0].token_acc == 1.0
    assert (editor.generate(unrelated, 5), editor.score(unrelated, ["x", "y"])) == before


def test_disabled_adaptor_and_restore_are_exact(grace, tmp_path):
    editor = grace(value_steps=5)
    original_mlp = editor.layer.mlp
    edit = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa")
    baseline = editor.score([Query(edit.prompt)], ["Goa"])
    editor.apply([edit])
    editor.save_codebook(tmp_path / "book.pt")
    editor.adaptor.enabled = False
    assert editor.score([Query(edit.prompt)], ["Goa"]) == baseline
    editor.restore()
    assert editor.layer.mlp is original_mlp
    assert editor.score([Query(edit.prompt)], ["Goa"]) == baseline
    editor.load_codebook(tmp_path / "book.pt")
    assert len(editor.adaptor.codebook) >= 1
    editor.restore()
