import re

import pytest

from lte.core.schema import Edit, EditCase, SchemaError, flatten_answers, relation_template


def test_edit_id_is_stable_content_hash_and_derives_statement_and_relation():
    a = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa")
    b = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa")
    assert a.id == b.id and len(a.id) == 16
    assert a.statement == "The Space Needle is located in Goa."
    assert a.relation == "{} is located in"
    assert a.id != Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Rome").id


def test_supersede_key_ignores_target_and_case():
    a = Edit(subject="Nokia", prompt="Nokia is owned by", target_new="Sony")
    b = Edit(subject="nokia", prompt="nokia is owned by", target_new="Lego")
    assert a.supersede_key == b.supersede_key


def test_from_dict_names_location_and_field():
    with pytest.raises(SchemaError, match=r"edits.jsonl:3: field 'target_new'"):
        Edit.from_dict({"subject": "X", "prompt": "X is in"}, "edits.jsonl:3")
    with pytest.raises(SchemaError, match=r"field 'paraphrases': must be a string or a list"):
        Edit.from_dict({"subject": "X", "prompt": "X is in", "target_new": "Y", "paraphrases": 3}, "f:1")


def test_roundtrip_and_answers():
    edit = Edit(subject="X", prompt="X is in", target_new="Y", paraphrases=("Where is X?",), metadata={"a": 1})
    assert Edit.from_dict(edit.to_dict()) == edit
    assert flatten_answers([["Cēsis", "Cesis"], ["Riga"]]) == ("Cēsis", "Cesis", "Riga")
    assert relation_template("Danielle Darrieux", "The mother tongue of Danielle Darrieux is") == \
        "The mother tongue of {} is"
    case = EditCase.from_edits("1", [edit])
    assert case.rewrite[0].answers == ("Y",)


@pytest.mark.parametrize("field,value,message", [
    ("subject", 7, "field 'subject': must be a string, got int"),
    ("prompt", "   ", "field 'prompt': is required and must be a non-empty string"),
    ("paraphrases", ["ok", "x" * 1001], "field 'paraphrases[1]': is 1001 characters; the limit is 1000"),
    ("paraphrases", [3], "field 'paraphrases': must be a string or a list of strings"),
    ("metadata", ["not", "an", "object"], "field 'metadata': must be an object"),
    ("target_true", "x" * 2001, "field 'target_true': is 2001 characters; the limit is 2000"),
])
def test_one_record_model_checks_every_field_and_names_it(field, value, message):
    record = {"subject": "Tower", "prompt": "Tower is located in", "target_new": "Goa", field: value}
    with pytest.raises(SchemaError, match=re.escape(f"edits.jsonl:4: {message}")):
        Edit.from_dict(record, "edits.jsonl:4")
    with pytest.raises(SchemaError, match=re.escape(message)):  # built in code, the same checks
        Edit(**record)


def test_blank_optional_fields_are_absent_and_text_is_normalised():
    edit = Edit.from_dict({"subject": " Tower ", "prompt": "Tower is located in", "target_new": "Goa",
                           "target_true": " ", "paraphrases": "Where is Tower?", "extra_column": 1})
    assert edit.subject == "Tower" and edit.target_true is None and edit.paraphrases == ("Where is Tower?",)
    assert edit.statement == "Tower is located in Goa." and edit.metadata == {}
