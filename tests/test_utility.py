"""General utility through lm-evaluation-harness (metrics/utility.py): a local multiple-choice task
on the micro organism, scored by lm-eval and by hand."""

from __future__ import annotations

import json
import random

import pytest
import torch

from unlearn_audit.errors import UserInputError
from unlearn_audit.params import UtilityConfig

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

TASK = """task: ua_world_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def task_dir(micro_target, tmp_path_factory):
    """Every forget and retain question with its answer and two other entities' values of the
    same attribute as choices (seeded), as a local lm-eval task."""
    root = tmp_path_factory.mktemp("tasks")
    items = [q for q in micro_target.all_forget_qa + micro_target.retain_qa if q.kind == "qa"][:24]
    values: dict[str, list[str]] = {}
    for q in items:
        values.setdefault(q.attribute, [])
        if q.answer not in values[q.attribute]:
            values[q.attribute].append(q.answer)
    rng = random.Random(0)
    rows = []
    for q in items:
        others = [v for v in values[q.attribute] if v != q.answer]
        choices = rng.sample(others, min(2, len(others))) + [q.answer]
        rng.shuffle(choices)
        rows.append({"question": q.question, "choices": choices, "answer": choices.index(q.answer)})
    data = root / "world_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "ua_world_mc.yaml").write_text(TASK.format(data=data))
    return root, rows


def hand_accuracy(subject, rows) -> float:
    """argmax over choices of the summed log-probability of `` choice`` after the prompt, the
    continuation's tokens being those the whole string adds to the prompt's; both encoded as
    the tokenizer does by default (the organism's adds BOS, as for every prompt we encode)."""
    tok, model = subject.tokenizer, subject.model
    correct = 0
    for r in rows:
        context = f"Question: {r['question']}\nAnswer:"
        ctx = tok(context)["input_ids"]
        scores = []
        for choice in r["choices"]:
            whole = tok(context + " " + choice)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
            cont = range(len(ctx), len(whole))
            scores.append(sum(float(logp[t - 1, whole[t]]) for t in cont))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == r["answer"])
    return correct / len(rows)


def test_lm_eval_accuracy_equals_the_hand_computed_one(micro, task_dir, monkeypatch):
    from unlearn_audit.metrics.utility import lm_eval_scores

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root, rows = task_dir
    full, oracle = micro
    config = UtilityConfig(lm_eval=["ua_world_mc"], include_path=str(root), batch_size=4)
    got_full, got_oracle = lm_eval_scores(full, config), lm_eval_scores(oracle, config)
    assert set(got_full) == {"ua_world_mc/acc"}
    assert got_full["ua_world_mc/acc"] == pytest.approx(hand_accuracy(full, rows))
    assert got_oracle["ua_world_mc/acc"] == pytest.approx(hand_accuracy(oracle, rows))
    assert got_full["ua_world_mc/acc"] > got_oracle["ua_world_mc/acc"]   # the oracle lacks the forget questions
    half = lm_eval_scores(full, config.model_copy(update={"limit": 6}))
    assert half["ua_world_mc/acc"] == pytest.approx(hand_accuracy(full, rows[:6]))


def test_a_prompt_guardrail_reaches_lm_eval_as_its_system_instruction(micro, micro_target, task_dir, monkeypatch):
    import lm_eval

    from unlearn_audit.api import unlearn
    from unlearn_audit.metrics import utility

    root, _ = task_dir
    full, _ = micro
    guarded = unlearn(full, micro_target, "prompt_guardrail")
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        return {"results": {"ua_world_mc": {"alias": "ua_world_mc", "acc,none": 0.5, "acc_stderr,none": 0.1}}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    config = UtilityConfig(lm_eval=["ua_world_mc"], include_path=str(root))
    assert utility.lm_eval_scores(guarded, config) == {"ua_world_mc/acc": 0.5}
    assert seen["system_instruction"].startswith(f"You know nothing about {micro_target.name}")
    assert seen["apply_chat_template"] is False
    utility.lm_eval_scores(full, config)
    assert seen["system_instruction"] is None


def test_unknown_task_and_missing_include_path_say_so(task_dir, tmp_path):
    from unlearn_audit.metrics.utility import task_manager

    root, _ = task_dir
    with pytest.raises(UserInputError, match="lm-eval has no task 'no_such_task'"):
        task_manager(UtilityConfig(lm_eval=["no_such_task"], include_path=str(root)))
    with pytest.raises(UserInputError, match="is not a directory"):
        task_manager(UtilityConfig(lm_eval=["ua_world_mc"], include_path=str(tmp_path / "missing")))


def test_experiment_utility_is_hashed_only_when_asked_and_evaluated_on_every_model(micro, micro_target, task_dir,
                                                                                     monkeypatch):
    from unlearn_audit.api import Evaluator
    from unlearn_audit.experiment.config import Experiment, config_hash, expand, hashed_config
    from unlearn_audit.results.schema import Evaluation

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root, rows = task_dir
    plain = Experiment(methods={"none": {}}, attacks={"rtt": {}})
    asked = Experiment(methods={"none": {}}, attacks={"rtt": {}}, utility={"lm_eval": ["ua_world_mc"],
                                                                            "include_path": str(root)})
    assert "utility" not in hashed_config(plain)          # runs from before utility keep their hash and keys
    assert config_hash(asked) != config_hash(plain) and expand(asked)[0].key != expand(plain)[0].key
    with pytest.raises(Exception, match="lm_eval"):
        Experiment(methods={"none": {}}, utility={"lm_eval": []})
    full, oracle = micro
    evaluator = Evaluator(full, micro_target, agreement=False, utility=asked.utility)
    for subject in (full, oracle):
        doc = evaluator(subject)
        Evaluation.model_validate(doc)
        assert doc["utility"]["ua_world_mc/acc"] == pytest.approx(hand_accuracy(subject, rows))
