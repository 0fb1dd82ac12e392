import uuid

from lte import prompting
from lte.editor import Query
from lte.lte_editor import LTEEditor
from lte.schema import Edit
from retrieval.store import EditStore, open_client

NEEDLE = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa")


def make_editor(tiny, embedder):
    return LTEEditor(tiny, EditStore(open_client(), f"t-{uuid.uuid4().hex[:8]}", embedder), k=2)


def test_relevant_edit_enters_the_prompt_and_unrelated_question_gets_no_block(tiny, embedder):
    editor = make_editor(tiny, embedder)
    editor.apply([NEEDLE])
    related, unrelated = editor.render([Query("Where is the Space Needle?"), Query("Who wrote Hamlet?")])
    assert NEEDLE.statement in related
    assert prompting.FACTS_HEADER not in unrelated
    assert unrelated == prompting.render(tiny.tokenizer, "Who wrote Hamlet?")  # exactly what the base model sees


def test_restore_removes_applied_edits(tiny, embedder):
    editor = make_editor(tiny, embedder)
    editor.apply([NEEDLE])
    editor.restore()
    assert editor.store.count() == 0
    assert NEEDLE.statement not in editor.render([Query("Where is the Space Needle?")])[0]


def test_answer_reports_the_edits_used(tiny, embedder):
    editor = make_editor(tiny, embedder)
    editor.apply([NEEDLE])
    answer = editor.answer("Where is the Space Needle?", max_new_tokens=3)
    assert [hit.edit.id for hit in answer.hits] == [NEEDLE.id]
    cloze = editor.answer("The Space Needle is located in", max_new_tokens=3)
    assert cloze.text.startswith("The Space Needle is located in")


def test_questions_without_relevant_edits_go_to_the_unedited_model(tiny, embedder):
    from lte.editor import UneditedEditor
    from lte.models import LoadedModel
    from lte.tiny import build_tiny_model

    base = LoadedModel(*build_tiny_model(seed=1), spec="base", base_spec="base")
    base.tokenizer.pad_token = base.tokenizer.eos_token
    editor = LTEEditor(tiny, EditStore(open_client(), f"r-{uuid.uuid4().hex[:8]}", embedder), unedited=base)
    editor.apply([NEEDLE])
    related, unrelated = Query("Where is the Space Needle?"), Query("Who wrote Hamlet?")
    scores = editor.score([related, unrelated], ["Goa", "Shakespeare"])
    assert scores[1] == UneditedEditor(base).score([unrelated], ["Shakespeare"])[0]
    assert scores[0] == ModelEditorLike(tiny, [NEEDLE.statement]).score([related], ["Goa"])[0]
    assert editor.runner_for(False).model is base.model and editor.runner_for(True).model is tiny.model


class ModelEditorLike:
    """The aligned model with a fixed fact block, to compare against the routed editor."""

    def __init__(self, loaded, facts):
        from lte.scoring import ModelRunner

        self.loaded, self.facts, self.runner = loaded, facts, ModelRunner(loaded.model, loaded.tokenizer)

    def score(self, queries, targets):
        texts = [prompting.render(self.loaded.tokenizer, q.prompt, self.facts) for q in queries]
        return self.runner.score(texts, [prompting.format_target(q.prompt, t) for q, t in zip(queries, targets)])


def test_two_hops_bring_the_edit_about_the_first_answer(tiny, embedder):
    import uuid

    from lte.lte_editor import LTEEditor
    from lte.schema import Edit
    from retrieval.store import EditStore, open_client

    citizen = Edit(subject="Ellie Kemper", prompt="Ellie Kemper is a citizen of", target_new="Croatia")
    head = Edit(subject="Croatia", prompt="The head of state of Croatia is", target_new="Ada Lovelace")
    question = "Who is the head of state of the country where Ellie Kemper holds a citizenship?"
    ids = {}
    for hops in (1, 2):
        store = EditStore(open_client(), f"hops-{uuid.uuid4().hex[:8]}", embedder)
        editor = LTEEditor(tiny, store, k=3, hops=hops)
        editor.apply([citizen, head])
        ids[hops] = [hit.edit.id for hit in editor.retrieve([question])[0]]
    assert citizen.id in ids[1] and head.id not in ids[1]
    assert ids[2][: len(ids[1])] == ids[1] and head.id in ids[2]


def test_the_gate_next_to_the_model_serves_lte_and_its_unaligned_ablation(tiny, tmp_path):
    from lte.lte_editor import GATE_FILE, LTEConfig, LTEEditor
    from lte.settings import Settings
    from retrieval.gate import UNFITTED, Gate

    fitted = Gate((1.0, 2.0, 3.0), -2.0, 0.7, "test")
    fitted.save(tmp_path / GATE_FILE)
    settings = Settings(home=tmp_path / "home", model=str(tmp_path))
    # `tiny` stands in for both the aligned model and its base: the gate follows --model, not the loaded weights
    assert LTEEditor.from_config(settings, tiny).store.gate == fitted
    assert LTEEditor.from_config(Settings(home=tmp_path / "home"), tiny).store.gate == UNFITTED
    explicit = Gate((0.5, 0.5, 0.5), 0.0, 0.5)
    explicit.save(tmp_path / "explicit.json")
    assert LTEEditor.from_config(settings, tiny, LTEConfig(gate=str(tmp_path / "explicit.json"))).store.gate == explicit


def test_restore_keeps_what_was_in_a_users_store_before(tiny, embedder):
    """LTE on a user's store: restore removes only the edits apply added and brings back what they superseded."""
    from lte.lte_editor import LTEEditor
    from lte.schema import Edit

    store = EditStore(open_client(), f"user-{uuid.uuid4().hex[:8]}", embedder)
    mine = Edit(subject="The Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome")
    store.add([mine, NEEDLE], progress=False)
    editor = LTEEditor(tiny, store)
    newer = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Lima")
    extra = Edit(subject="Toyota", prompt="Toyota is owned by", target_new="Apple")
    editor.apply([mine, newer, extra])  # one already stored, one superseding a stored edit, one new
    assert store.get(NEEDLE.id).status == "superseded"
    editor.restore()
    assert {s.edit.id: s.status for s in store.list(history=True)} == {mine.id: "current", NEEDLE.id: "current"}
