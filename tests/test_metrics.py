import pytest

from lte.core.editor import Query, UneditedEditor
from lte.core.metrics import FacetTally, contains_answer, ngram_entropy, normalize


def test_answer_matching_is_case_and_space_insensitive():
    assert normalize("  The   CITY of\nGoa ") == "the city of goa"
    assert contains_answer("It is in  goa, India", ["Goa"])
    assert not contains_answer("Seattle", ["Goa", ""])


def test_ngram_entropy_is_low_for_repetition():
    assert ngram_entropy("the the the the the the the the") < 0.1
    assert ngram_entropy("a quick brown fox jumps over the lazy dog near the river bank") > 2.5


def test_tally_omits_prob_win_without_true_target():
    tally = FacetTally()
    tally.add(1.0, True)
    tally.add(0.5, False)
    assert tally.summary() == {"token_acc": 0.75, "gen_acc": 0.5, "n": 2}


def test_token_acc_and_gen_acc_on_targets_the_model_surely_does_or_does_not_predict(tiny):
    editor = UneditedEditor(tiny)
    query = Query("Where is the Space Needle?")
    own = editor.generate([query], 4)[0]  # whatever the model says greedily is, by definition, its prediction
    first = tiny.tokenizer(own, add_special_tokens=False)["input_ids"][0]
    # A one-token target that is not the model's top prediction cannot be right under teacher forcing.
    encode = lambda text: tiny.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    other = next(text for text in map(tiny.tokenizer.decode, range(300, 500))
                 if len(encode(text)) == 1 and encode(text) != [first] and text.strip())
    sure, never = editor.score([query, query], [own, other])
    assert sure.token_acc == 1.0
    assert never.token_acc == 0.0
    assert sure.mean_logprob > never.mean_logprob
    assert not contains_answer(own, [other + "zz"])
    assert pytest.approx(sum(sure.logprobs) / len(sure.logprobs)) == sure.mean_logprob


def test_answers_match_whole_words_only():
    assert contains_answer("It is in Goa, India", ["Goa"])
    assert not contains_answer("A goat farm", ["Goa"])
    assert contains_answer("He speaks English.", ["english"])
    assert not contains_answer("Englishman", ["English"])
    assert contains_answer("Franche-Comté", ["Franche-Comté"]) and contains_answer("C++ is", ["C++"])
