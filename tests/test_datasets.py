import json

import pytest

from lte.core.datasets import detect_format, load_cases, load_edits
from lte.core.schema import SchemaError
from tests.conftest import shared_file

# (file, records in SOURCE.md, format)
SHARED_FILES = [
    ("counterfact_easyedit/counterfact-edit.json", 10000, "easyedit_counterfact"),
    ("counterfact_easyedit/counterfact-train.json", 10000, "easyedit_counterfact"),
    ("counterfact_easyedit/counterfact-val.json", 1919, "easyedit_counterfact"),
    ("knowedit/ZsRE-test-all.json", 1304, "knowedit"),
    ("knowedit/wiki_counterfact_train_cf.json", 1428, "knowedit"),
    ("knowedit/wiki_recent_train.json", 570, "knowedit"),
    ("knowedit/wikibio-test-all.json", 306, "knowedit"),
    ("knowedit/wikibio-train-all.json", 464, "knowedit"),
    ("zsre_mend/zsre_mend_train-1k.json", 1000, "zsre_mend"),
    ("mquake/AKEW-MQuAKE-CF-354.json", 354, "mquake"),
    ("mquake/MQuAKE-hard.json", 429, "mquake"),
    ("unke/final_data_v2.json", 1000, "unke"),
    ("rome_knowns/known_1000.json", 1209, "rome_knowns"),
]


def raw_counts(records, fmt):
    """Probe counts computed straight from the raw JSON, independently of the loaders."""
    def listed(record, facet):
        return sum(len(v) for v in (record.get(facet) or {}).values())

    counters = {
        "easyedit_counterfact": lambda r: (1, 1, 0),
        "knowedit": lambda r: (1 if "rephrase_prompt" in r else 0, listed(r, "locality"), listed(r, "portability")),
        "zsre_mend": lambda r: (1, 1, 0),
        "mquake": lambda r: (sum(1 for rw in r["requested_rewrite"] if rw.get("question")), 0, len(r["questions"])),
        "unke": lambda r: (1, 0, len(r["sub_question"])),
        "rome_knowns": lambda r: (0, 0, 0),
    }
    totals = [counters[fmt](r) for r in records]
    return tuple(sum(t[i] for t in totals) for i in range(3))


@pytest.mark.parametrize("relative,expected,fmt", SHARED_FILES)
def test_every_shared_file_loads_without_losing_probes(relative, expected, fmt):
    path = shared_file(relative)
    records = json.loads(path.read_text())
    assert len(records) == expected
    assert detect_format(records[0]).name == fmt
    # zsRE's train sample has two records with an empty new target: not edits, skipped with a warning.
    valid = [r for r in records if fmt != "zsre_mend" or r["alt"].strip()]
    with pytest.warns(UserWarning) if len(valid) < len(records) else _no_warning():
        cases = load_cases(path)
    assert len(cases) == len(valid)
    got = (sum(len(c.paraphrases) for c in cases), sum(len(c.locality) for c in cases),
           sum(len(c.portability) for c in cases))
    assert got == raw_counts(valid, fmt)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_easyedit_counterfact_fields():
    case = load_cases(shared_file("counterfact_easyedit/counterfact-edit.json"), limit=1)[0]
    assert case.edit.subject == "Danielle Darrieux"
    assert case.edit.target_new == "English" and case.edit.target_true == "French"
    assert case.paraphrases[0].answers == ("English",)
    assert case.locality[0].answers == ("French",)
    assert case.edit.paraphrases == ()  # test paraphrases are never retrieval keys


def test_rome_counterfact_record():
    record = {"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "D. D.",
              "target_new": {"str": "English"}, "target_true": {"str": "French"}, "relation_id": "P103"},
              "paraphrase_prompts": ["a", "b"], "neighborhood_prompts": ["c", "d", "e"], "attribute_prompts": []}
    fmt = detect_format(record)
    case = fmt.convert(record, "r")
    assert fmt.name == "rome_counterfact" and case.edit.prompt == "The mother tongue of D. D. is"
    assert len(case.paraphrases) == 2 and len(case.locality) == 3 and case.locality[0].answers == ("French",)


def test_jsonl_error_names_file_line_and_field(tmp_path):
    path = tmp_path / "edits.jsonl"
    good = {"subject": "X", "prompt": "X is in", "target_new": "Y"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"subject": "Z", "prompt": "Z is in"}) + "\n")
    with pytest.raises(SchemaError, match=r"edits.jsonl:2: field 'target_new'"):
        load_edits(path)
    path.write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(SchemaError, match=r"edits.jsonl:2: invalid JSON"):
        load_edits(path)


def test_csv_and_lte_case_format(tmp_path):
    csv_path = tmp_path / "edits.csv"
    csv_path.write_text("subject,prompt,target_new,paraphrases\nX,X is in,Y,Where is X?|X lies in\n")
    [edit] = load_edits(csv_path)
    assert edit.paraphrases == ("Where is X?", "X lies in")
    case_path = tmp_path / "cases.jsonl"
    case_path.write_text(json.dumps({"subject": "X", "prompt": "X is in", "target_new": "Y",
                                     "locality": [{"prompt": "W is in", "answers": ["V"]}],
                                     "portability": ["Q?"]}) + "\n")
    [case] = load_cases(case_path)
    assert case.locality[0].answers == ("V",) and case.portability[0].prompt == "Q?"


def test_unknown_format_and_missing_file(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(SchemaError, match="unrecognised record"):
        load_cases(path)
    with pytest.raises(FileNotFoundError):
        load_cases(tmp_path / "missing.json")
