import numpy as np

from lte.core.schema import Edit, EditCase, Probe
from retrieval.gate import (
    UNFITTED,
    Gate,
    best_threshold,
    fit_gate,
    gate_pairs,
    mask_subject,
    relation_similarity,
    rule_gate,
)


def test_mask_subject_whole_phrase_or_its_words():
    assert mask_subject("Where was Lionel Messi born?", "Lionel Messi") == "Where was _ born?"
    assert mask_subject("Where was Messi born?", "Lionel Messi") == "Where was _ born?"
    assert mask_subject("Messiah", "Messi") == "Messiah"  # whole words only


def test_relation_similarity_separates_relations_of_one_subject(embedder):
    edit = Edit(subject="Epaspidoceras", prompt="Which family does Epaspidoceras belong to?", target_new="Noctuidae")
    same, other = relation_similarity(["What family are Epaspidoceras?", "The taxon rank of Epaspidoceras is"],
                                      [edit, edit], embedder.encode)
    assert same > other + 0.2


def test_fit_gate_learns_from_synthetic_features():
    # cosine alone decides: relevant pairs have cosine 0.9, unrelated 0.2
    edit = Edit(subject="A", prompt="A is in", target_new="B")
    pairs = [(f"q{i}", edit, i % 2 == 0) for i in range(40)]
    vectors = {}

    def embed(texts):
        out = []
        for t in texts:
            if t not in vectors:
                v = np.zeros(4)
                v[0] = 1.0
                if t.startswith("q") and int(t[1:]) % 2:  # unrelated queries point elsewhere
                    v[:2] = [0.2, np.sqrt(1 - 0.04)]
                vectors[t] = v
            out.append(vectors[t])
        return out

    gate = fit_gate(pairs, embed, lambda e: [e.prompt])
    assert gate.fit_precision == 1.0 and gate.fit_recall == 1.0 and gate.weights[0] > 0


def test_gate_round_trips_and_the_rule_gate_is_the_unfitted_rule(tmp_path):
    gate = Gate((1.0, 2.0, 3.0), -1.5, 0.4, "emb", 0.9, 0.8, 10, 5)
    gate.save(tmp_path / "g.json")
    assert Gate.load(tmp_path / "g.json") == gate
    for cosine, subject in [(0.6, 1.0), (0.79, 0.0), (0.81, 0.0), (0.45, 1.0)]:
        relevance = cosine - 0.3 * (1 - subject)
        assert (UNFITTED.probability((cosine, subject, 0.0)) >= 0.5) == (relevance >= 0.5)
        assert (rule_gate(0.6).probability((cosine, subject, 0.0)) >= 0.5) == (relevance >= 0.6)


def test_gate_pairs_label_paraphrases_and_locality():
    edit = Edit(subject="A", prompt="A is in", target_new="B")
    case = EditCase.from_edits("0", [edit], paraphrases=[Probe("Where is A?")], locality=[Probe("C is in")])
    assert [(q, y) for q, _, y in gate_pairs([case])] == [("A is in", True), ("Where is A?", True), ("C is in", False)]


def test_best_threshold_separates():
    assert 0.3 < best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) < 0.8
