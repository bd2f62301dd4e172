import json

import pytest

from unlearn_audit.data.target import load_target, save_target
from unlearn_audit.errors import UserInputError


def test_world_target_sets_are_disjoint_by_entity():
    t = load_target("world:0")
    assert t.name == load_target("world:Veadugrios").name
    forget_entities = {q.entity for q in t.all_forget_qa}
    retain_entities = {q.entity for q in t.retain_qa}
    unrelated_entities = {q.entity for q in t.unrelated_qa}
    assert forget_entities.isdisjoint(retain_entities | unrelated_entities)
    assert retain_entities.isdisjoint(unrelated_entities)
    assert {q.entity for q in t.forget_qa}.isdisjoint({q.entity for q in t.forget_heldout_qa})
    assert len(t.forget_qa) == len(t.forget_heldout_qa) == 70
    # retain text never mentions a forget entity
    assert not any(e in s for s in t.retain_text for e in forget_entities)
    assert set(t.eval_sets()) >= {"forget", "forget_heldout", "retain", "unrelated",
                                  "forget_paraphrase", "forget_completion"}


def test_world_spec_variants():
    assert load_target("world:micro/0").forget_qa[0].entity != load_target("world:0").forget_qa[0].entity
    assert load_target("world:0@1").name != load_target("world:0").name
    for bad in ("world:", "world:0@x", "world:Nope"):
        with pytest.raises(UserInputError):
            load_target(bad)
    with pytest.raises(UserInputError, match="out of range"):
        load_target("world:9")


def test_export_roundtrip(tmp_path):
    t = load_target("world:micro/1")
    save_target(t, tmp_path / "t")
    u = load_target(tmp_path / "t")
    assert u.name == t.name
    assert [(q.question, q.answer) for q in u.forget_qa] == [(q.question, q.answer) for q in t.forget_qa]
    assert [(q.question, q.answer) for q in u.forget_heldout_qa] == [(q.question, q.answer) for q in t.forget_heldout_qa]
    assert u.forget_text == t.forget_text and u.retain_text == t.retain_text
    assert u.extra_eval["forget_completion"][0].kind == "completion"
    assert not list((tmp_path / "t").glob("*.tmp"))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_user_directory_without_heldout_is_split_by_seed(tmp_path):
    qa = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(10)]
    _write(tmp_path / "forget.jsonl", [{"text": "some text"}] + qa)
    _write(tmp_path / "retain.jsonl", [{"text": "keep"}, {"question": "r?", "answer": "r"}])
    t = load_target(tmp_path, seed=0)
    assert len(t.forget_qa) == 5 and len(t.forget_heldout_qa) == 5
    assert {q.question for q in t.all_forget_qa} == {r["question"] for r in qa}
    assert t.unrelated_qa == [] and "unrelated" not in t.eval_sets()
    assert load_target(tmp_path, seed=0).forget_qa == t.forget_qa
    assert load_target(tmp_path, seed=1).forget_qa != t.forget_qa


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\nnot json\n', "line 2: not valid JSON"),
    ('{"question": "q?"}\n', "line 1: expected"),
    ('{"question": "q?", "answer": "a", "kind": "weird"}\n', "kind must be"),
    ('{"text": "only text"}\n', "at least 2 question/answer"),
])
def test_bad_jsonl_gives_clear_error(tmp_path, content, message):
    (tmp_path / "forget.jsonl").write_text(content)
    _write(tmp_path / "retain.jsonl", [{"text": "keep"}])
    with pytest.raises(UserInputError, match=message):
        load_target(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(UserInputError, match="no forget.jsonl"):
        load_target(tmp_path)
    with pytest.raises(UserInputError, match="neither world"):
        load_target(tmp_path / "nope")
