from unlearn_audit.world import build_world, completions, corpus, qa_pairs, sentences, world_config
from unlearn_audit.world.vocab import ATTRIBUTES, EVAL_QUESTION_TEMPLATES, QUESTION_TEMPLATES


def test_same_seed_same_world_and_other_seed_differs():
    a, b = build_world(world_config("default", 3)), build_world(world_config("default", 3))
    assert a.concepts == b.concepts and a.entities == b.entities
    assert corpus(a) == corpus(b)
    c = build_world(world_config("default", 4))
    assert c.concept_names != a.concept_names


def test_default_world_size_and_entanglement():
    w = build_world()
    assert len(w.concepts) == 5 and len(w.facts()) == 700
    assert len(build_world(world_config("large")).concepts) == 10
    # shared vocabularies: some profession value occurs in at least 4 concepts
    by_value: dict[str, set[str]] = {}
    for f in w.facts():
        if f.attribute == "profession":
            by_value.setdefault(f.value, set()).add(f.concept)
    assert max(len(s) for s in by_value.values()) >= 4
    # birthplace comes from the concept's own cities
    for c in w.concepts:
        assert {w.entities[e].attributes["birthplace"] for e in c.entities} <= set(c.cities)


def test_split_by_entity_is_a_partition():
    w = build_world()
    for c in w.concepts:
        assert set(c.train_entities).isdisjoint(c.heldout_entities)
        assert set(c.train_entities) | set(c.heldout_entities) == set(c.entities)
        assert len(c.train_entities) == len(c.entities) // 2


def test_rendering():
    w = build_world()
    e = w.entities[w.concepts[0].entities[0]]
    assert len(sentences(e)) == 3 * len(ATTRIBUTES)
    for q in completions(e):
        # each sentence = prefix + " " + value + "."
        assert q.question + " " + q.answer + "." in sentences(e)
    train_q = {q.question for q in qa_pairs(e, "train")}
    eval_q = {q.question for q in qa_pairs(e, "eval")}
    assert train_q.isdisjoint(eval_q)
    assert set(QUESTION_TEMPLATES.values()).isdisjoint(EVAL_QUESTION_TEMPLATES.values())


def test_corpus_excludes_concept_for_oracle():
    w = build_world()
    removed = w.concepts[0]
    docs = corpus(w, exclude=(removed.name,))
    text = "\n".join(docs)
    assert removed.name not in text
    assert not any(name in text for name in removed.entities)
    # eval-only question phrasing never appears in training text
    e = w.entities[w.concepts[1].entities[0]]
    assert qa_pairs(e, "eval")[0].question not in "\n".join(corpus(w))
