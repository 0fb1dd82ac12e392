import uuid

from lte import prompting
from lte.editor import Query
from lte.inference import LTEEditor
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
