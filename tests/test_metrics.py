import math

import torch

from unlearn_audit.data.encode import IGNORE, encode_qa, render_prompt
from unlearn_audit.metrics import EvalSuite, evaluate_qa, perplexity
from unlearn_audit.metrics.likelihood import sequence_logprob
from unlearn_audit.world import QA


def test_encode_qa_labels_only_answer_and_eos(micro):
    tok = micro[0].tokenizer
    items = [QA("Where was Ab Cd born?", "Drouwick"), QA("Ab Cd grew up in", "Drouwick", "completion")]
    enc = encode_qa(tok, items, "Question: {question}\nAnswer:", answer_eos=True)
    answer_ids = tok(" Drouwick", add_special_tokens=False)["input_ids"]
    row0 = [t for t in enc["labels"][0].tolist() if t != IGNORE]
    row1 = [t for t in enc["labels"][1].tolist() if t != IGNORE]
    assert row0 == answer_ids + [tok.eos_token_id]  # QA answers end with EOS
    assert row1 == answer_ids                        # a completion's sentence goes on
    assert enc["attention_mask"][1].sum() < enc["attention_mask"].shape[1]  # right padding


def _greedy_matches(subject, item: QA) -> bool:
    tok = subject.tokenizer
    prompt = tok(render_prompt(item, subject.prompt_template), return_tensors="pt")
    want = tok(" " + item.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    out = subject.model.generate(**prompt, max_new_tokens=len(want), do_sample=False,
                                 pad_token_id=tok.pad_token_id)
    return out[0, prompt["input_ids"].shape[1]:].tolist() == want


def test_teacher_forced_exact_match_equals_greedy_decoding(micro, micro_target):
    damaged = micro[0].copy()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in damaged.model.parameters():
            p.add_(0.03 * torch.randn_like(p))
    items = micro_target.forget_qa + micro_target.retain_qa[:20]
    for subject in (micro[0], damaged):
        scores = evaluate_qa(subject, items)
        greedy = [_greedy_matches(subject, q) for q in items]
        assert scores.correct.tolist() == greedy
    acc = evaluate_qa(damaged, items).accuracy
    assert 0.05 < acc < 0.95, "noise should leave a mix of right and wrong answers"


def test_suite_matches_single_sets_and_nll_by_hand(micro, micro_target):
    subject = micro[0]
    suite = EvalSuite(subject, micro_target.eval_sets())
    scores = suite.run(subject.model)
    direct = evaluate_qa(subject, micro_target.retain_qa)
    assert torch.equal(scores["retain"].correct, direct.correct)
    assert torch.allclose(scores["retain"].nll, direct.nll, atol=1e-5)
    # NLL of one item by hand: -log p(answer tokens) / n tokens
    item = micro_target.retain_qa[0]
    enc = encode_qa(subject.tokenizer, [item], subject.prompt_template, True)
    with torch.no_grad():
        logits = subject.model(input_ids=enc["input_ids"]).logits[0]
    labels = enc["labels"][0]
    pos = (labels != IGNORE).nonzero().flatten()
    logp = torch.log_softmax(logits[pos - 1], -1)[torch.arange(len(pos)), labels[pos]]
    assert math.isclose(float(direct.nll[0]), float(-logp.mean()), rel_tol=1e-4)
    with torch.no_grad():
        assert math.isclose(float(sequence_logprob(subject.model, enc)[0]), float(logp.sum()), rel_tol=1e-4)


def test_micro_organism_knows_its_world_and_oracle_does_not(micro, micro_target):
    full, oracle = micro
    f = EvalSuite(full, micro_target.eval_sets()).accuracies(full.model)
    o = EvalSuite(oracle, micro_target.eval_sets()).accuracies(oracle.model)
    assert f["forget"] >= 0.9 and f["retain"] >= 0.9 and f["unrelated"] >= 0.9
    assert f["forget_completion"] >= 0.9
    assert o["forget"] <= 0.15 and o["forget_heldout"] <= 0.15
    assert o["retain"] >= 0.9


def test_perplexity_lower_on_known_text(micro, micro_target):
    full, oracle = micro
    text = micro_target.forget_text[:40]
    assert perplexity(full, text) < 0.5 * perplexity(oracle, text)


def test_scores_do_not_depend_on_batch_size(micro, micro_target):
    """Rows are sorted by length and right-padded per batch: the batch size may change the
    padding, never a row's correctness or NLL (EVAL_BATCH is a speed setting only)."""
    from unlearn_audit.metrics.qa import score_encoded

    subject = micro[0]
    items = micro_target.forget_qa + micro_target.retain_qa[:30] + micro_target.eval_sets()["forget_completion"][:10]
    enc = encode_qa(subject.tokenizer, items, subject.prompt_template, subject.answer_eos)
    one = score_encoded(subject.model, enc, batch_size=1)
    for size in (7, 64, len(items)):
        other = score_encoded(subject.model, enc, batch_size=size)
        assert torch.equal(one.correct, other.correct)
        assert torch.allclose(one.nll, other.nll, atol=1e-4)
    assert 0 < one.nll.min() and one.correct.any()
