import uuid

from lte.core import prompting
from lte.core.editor import Query
from lte.core.schema import Edit
from lte.method.editor import LTEEditor
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
    from lte.core.editor import UneditedEditor
    from lte.core.models import LoadedModel
    from lte.core.tiny import build_tiny_model

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
        from lte.core.scoring import ModelRunner

        self.loaded, self.facts, self.runner = loaded, facts, ModelRunner(loaded.model, loaded.tokenizer)

    def score(self, queries, targets):
        texts = [prompting.render(self.loaded.tokenizer, q.prompt, self.facts) for q in queries]
        return self.runner.score(texts, [prompting.format_target(q.prompt, t) for q, t in zip(queries, targets)])


def test_two_hops_bring_the_edit_about_the_first_answer(tiny, embedder):
    import uuid

    from lte.core.schema import Edit
    from lte.method.editor import LTEEditor
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
    from lte.core.settings import Settings
    from lte.method.editor import GATE_FILE, LTEConfig, LTEEditor
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
    from lte.core.schema import Edit
    from lte.method.editor import LTEEditor

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


def test_a_lora_model_answers_unrelated_questions_with_its_own_weights_adapter_off(tiny, tmp_path):
    """`lte align --lora` output loaded unmerged: the unedited route is the same weights with the adapter off (no
    second copy), answering exactly as the base model; the aligned route matches the merged model's."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    from lte.core.editor import UneditedEditor
    from lte.core.models import MANIFEST, load_model
    from lte.core.settings import Settings
    from lte.core.tiny import build_tiny_model
    from lte.method.editor import LTEEditor

    model, _ = build_tiny_model()  # the same weights as `tiny`, which stays the plain base here
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "lora")
    (tmp_path / "lora" / MANIFEST).write_text(json.dumps({"base_model": "tiny-random"}))
    settings = Settings(home=tmp_path / "home", model=str(tmp_path / "lora"))
    related, unrelated = Query("Where is the Space Needle?"), Query("Who wrote Hamlet?")

    one_copy = LTEEditor.from_config(settings, load_model(settings.model, settings.home, merge_adapter=False))
    assert one_copy.unedited.adapter_disabled and one_copy.unedited_runner.model is one_copy.runner.model
    one_copy.apply([NEEDLE])
    scores = one_copy.score([related, unrelated], ["Goa", "Shakespeare"])
    base_score = UneditedEditor(tiny).score([unrelated], ["Shakespeare"])[0]
    assert scores[1] == base_score  # exactly the base model's answer
    assert one_copy.score([unrelated], ["Shakespeare"])[0] == base_score  # and the adapter is back on after
    assert one_copy.runner_for(True).score(["x"], [" y"]) != UneditedEditor(tiny).runner.score(["x"], [" y"])

    two_copies = LTEEditor.from_config(settings, load_model(settings.model, settings.home))  # merged + a base copy
    assert two_copies.unedited_runner.model is not two_copies.runner.model
    two_copies.apply([NEEDLE])
    merged = two_copies.score([related, unrelated], ["Goa", "Shakespeare"])
    assert merged[1] == scores[1]
    assert torch.allclose(torch.tensor(merged[0].logprobs), torch.tensor(scores[0].logprobs), atol=1e-4)


def test_a_fully_fine_tuned_model_brings_one_base_copy_for_routing_reference_and_editors(tiny, tmp_path):
    """`lte eval` with a full fine-tune loads its base once, for LTE's routing and the locality reference alike."""
    from lte.core.models import LoadedModel
    from lte.core.settings import Settings
    from lte.registry import base_model_of, build_editor, editor_config

    settings = Settings(home=tmp_path / "home")
    aligned = LoadedModel(tiny.model, tiny.tokenizer, spec="aligned-tiny", base_spec="tiny-random")
    editor = build_editor("lte", settings, aligned)
    reference = base_model_of(aligned, settings)
    assert editor.unedited is reference and reference.model is not aligned.model  # loaded once, shared
    assert build_editor("grace", settings, aligned, editor_config("grace", {"layer": 1})).loaded is reference
    assert base_model_of(tiny, settings) is tiny  # a plain model is its own base
