"""The benchmarks' metrics against hand computations and independent implementations.

References (re-derived, see each module): TOFU truth ratio / model utility
locuslab/tofu@bdc209ea7c6cc2e7079ea1afb6468d3ddcc65f8e:aggregate_eval_stat.py; forget quality
locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:src/evals/metrics/privacy.py;
WMDP EleutherAI/lm-evaluation-harness@43468b998f0cc1db09d8dd3a252470cc63728eec:lm_eval/tasks/wmdp/_default_template_yaml;
MUSE swj0419/muse_bench@fcd6651da8bcf34744fb9a1cc69bb856ab3eb277:metrics/{verbmem,knowmem,privleak}.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn_audit.data.target import load_target
from unlearn_audit.metrics import mc, muse, rouge, tofu

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


# ----------------------------------------------------------------------------- TOFU formulas

def test_truth_ratio_by_hand():
    r = tofu.truth_ratios([1.0, 2.0], [[2.0, 4.0], [1.0, 1.0]])
    assert np.allclose(r, [math.exp(1 - 3), math.exp(2 - 1)])
    assert tofu.truth_ratio_score(r, forget=True) == pytest.approx((math.exp(-2) + math.exp(-1)) / 2)
    assert tofu.truth_ratio_score(r, forget=False) == pytest.approx((1 - math.exp(-2) + 0) / 2)


def test_answer_prob_by_hand():
    ln = math.log
    assert tofu.answer_prob([ln(2), ln(4)]) == pytest.approx(0.375)
    # normalised: .5 / (.5 + .5) and .25 / (.25 + .25 + .25)
    assert tofu.answer_prob([ln(2), ln(4)], [[ln(2)], [ln(4), ln(4)]]) == pytest.approx((0.5 + 1 / 3) / 2)


def test_harmonic_mean():
    assert tofu.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert tofu.harmonic_mean([1.0, 0.0, 0.5]) == 0.0


def test_ks_pvalue_by_hand():
    # fully separated samples of 3: only 2 of the C(6,3) = 20 interleavings reach D = 1
    assert tofu.ks_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert tofu.ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    same = [0.3, 0.1, 0.7, 0.7, 2.0]
    assert tofu.ks_pvalue(same, list(same)) == 1.0  # identical distributions
    assert tofu.forget_quality([], same) is None


def test_ks_pvalue_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n1, n2, shift in [(5, 7, 0.0), (40, 40, 0.5), (20, 33, 1.0), (100, 90, 0.2)]:
        a, b = np.round(rng.normal(size=n1), 1), np.round(rng.normal(size=n2) + shift, 1)  # ties included
        ref = stats.ks_2samp(a, b, method="exact")
        assert tofu.ks_statistic(a, b) == pytest.approx(ref.statistic)
        assert tofu.ks_pvalue(a, b) == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


# ----------------------------------------------------------------------------- ROUGE

def test_rouge_l_by_hand():
    p, r, f = rouge.rouge_l_scores("the cat sat on the mat", "The cat is on the mat.")
    assert (p, r, f) == pytest.approx((5 / 6, 5 / 6, 5 / 6))
    p, r, f = rouge.rouge_l_scores("Paris, France!", "paris")  # punctuation separates, case folds
    assert (p, r, f) == pytest.approx((0.5, 1.0, 2 / 3))
    assert rouge.rouge_l_scores("", "paris") == (0.0, 0.0, 0.0)


def test_rouge_stemming_by_hand():
    stem = rouge.stemmer(None)
    if stem is None:
        pytest.skip("nltk not installed")
    # running -> run, runs -> run; "quickly" and "quick" stay different; "cats" (4 letters) -> cat
    assert rouge.rouge_tokens("Running quickly, cats", stem) == ["run", "quickli", "cat"]
    assert rouge.rouge_l_scores("running quickly", "runs quick", stem)[1] == pytest.approx(0.5)


def test_rouge_matches_rouge_score():
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    texts = ["The author was born in Lorvik, 1951.", "She wrote three novels about the sea and its storms.",
             "born in Lorvik", "Novels: sea, storms & sailors!", "", "x"]
    for use_stemmer in (False, True):
        scorer = rs.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        stem = rouge.stemmer(use_stemmer)
        for hyp in texts:
            for ref in texts:
                want = scorer.score(ref, hyp)["rougeL"]
                got = rouge.rouge_l_scores(hyp, ref, stem)
                assert got == pytest.approx((want.precision, want.recall, want.fmeasure))


# ----------------------------------------------------------------------------- on the micro organism

def _answer_nll(subject, question, answer):
    """Mean NLL of the answer tokens, one unbatched forward pass (independent of encode_qa)."""
    tok = subject.tokenizer
    prompt = subject.prompt_template.format(question=question)
    p = tok(prompt)["input_ids"]
    full = tok(prompt + " " + answer)["input_ids"]
    assert full[:len(p)] == p
    ans = full[len(p):] + ([tok.eos_token_id] if subject.answer_eos else [])
    ids = torch.tensor([p + ans])
    with torch.no_grad():
        logp = torch.log_softmax(subject.model(ids).logits[0, :-1].float(), -1)
    return float(-np.mean([logp[len(p) - 1 + i, t].item() for i, t in enumerate(ans)]))


@pytest.fixture(scope="module")
def tofu_target():
    """The TOFU fixture with its evaluation sets cut to a few items (CPU time)."""
    t = load_target(f"tofu:forget01@{FIX / 'tofu'}")
    t.benchmark.truth = {k: v[:10] if k == "forget" else v[:2] for k, v in t.benchmark.truth.items()}
    return t


@pytest.mark.slow
def test_tofu_scores_match_an_unbatched_computation(micro, tofu_target):
    full, _ = micro
    items = tofu_target.benchmark.truth["forget"][:3]
    sub = type(tofu_target)(**{**tofu_target.__dict__})
    sub.benchmark = type(tofu_target.benchmark)("tofu", "forget01", truth={"forget": items})
    scores = tofu.tofu_scores(full, sub, max_new_tokens=8, rouge_stem=False)
    ratios = [math.exp(_answer_nll(full, t.question, t.paraphrased)
                       - np.mean([_answer_nll(full, t.question, p) for p in t.perturbed])) for t in items]
    assert np.allclose(scores["forget_truth_ratios"], ratios, rtol=1e-4)
    assert scores["sets"]["forget"]["truth_ratio"] == pytest.approx(np.mean(np.minimum(ratios, 1 / np.array(ratios))), rel=1e-4)
    probs = [math.exp(-_answer_nll(full, t.question, t.answer)) for t in items]
    assert scores["sets"]["forget"]["prob"] == pytest.approx(np.mean(probs), rel=1e-4)
    # ROUGE-L recall of the greedy answer, decoded one question at a time
    tok = full.tokenizer
    recalls = []
    for t in items:
        ids = torch.tensor([tok(full.prompt_template.format(question=t.question))["input_ids"]])
        out = full.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        recalls.append(rouge.rouge_l_scores(text, t.answer)[1])
    assert scores["sets"]["forget"]["rouge_l_recall"] == pytest.approx(np.mean(recalls))
    assert scores["rouge_stemmer"] == "none" and scores["model_utility"] is None


@pytest.mark.slow
def test_tofu_oracle_against_itself_has_forget_quality_1(micro, tofu_target):
    from unlearn_audit.metrics.benchmark import benchmark_scores, headline

    full, oracle = micro
    ref = benchmark_scores(oracle, tofu_target, max_new_tokens=4, rouge_stem=False)
    again = benchmark_scores(oracle, tofu_target, reference=ref, max_new_tokens=4, rouge_stem=False)
    assert again["forget_quality"] == 1.0 and len(ref["forget_truth_ratios"]) == 10
    u = benchmark_scores(full, tofu_target, reference=ref, max_new_tokens=4, rouge_stem=False)
    assert u["forget_quality"] == pytest.approx(tofu.ks_pvalue(u["forget_truth_ratios"], ref["forget_truth_ratios"]))
    parts = [u["sets"][k][m] for k in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge_l_recall", "truth_ratio")]
    assert u["model_utility"] == pytest.approx(tofu.harmonic_mean(parts))
    assert set(headline(u)) >= {"forget_truth_ratio", "forget_quality", "model_utility"}


# ----------------------------------------------------------------------------- WMDP

def test_mc_accuracy_by_hand():
    acc, correct = mc.mc_accuracy_from_loglikelihoods([np.array([0, 1, 0, 0]), np.array([2, 2, 0, 0])], [1, 1])
    assert correct.tolist() == [True, False] and acc == 0.5  # a tie goes to the first choice, as argmax
    item = load_target(f"wmdp:bio@{FIX / 'wmdp'}").benchmark.mc[0]
    prompt = mc.mc_prompt(item, "About biology.\n\n")
    assert prompt == ("About biology.\n\n" + item.question.strip() + "\n" +
                      "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(item.choices)) + "\nAnswer:")


def test_mc_loglikelihoods_match_unbatched_scoring(micro):
    full, _ = micro
    b = load_target(f"wmdp:bio@{FIX / 'wmdp'}").benchmark
    lls = mc.choice_loglikelihoods(full, b.mc, b.mc_description, batch_size=5)
    tok = full.tokenizer
    for item, got in zip(b.mc, lls, strict=True):
        ctx = mc.mc_prompt(item, b.mc_description)
        want = []
        for letter in "ABCD":
            c = tok(ctx)["input_ids"]
            whole = tok(ctx + " " + letter)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(full.model(torch.tensor([whole])).logits[0].float(), -1)
            want.append(sum(logp[i - 1, whole[i]].item() for i in range(len(c), len(whole))))
        assert np.allclose(got, want, atol=1e-4)
    res = mc.mc_accuracy(full, b.mc, b.mc_description)
    assert res["acc"] == pytest.approx(np.mean([int(np.argmax(v)) == m.answer for v, m in zip(lls, b.mc, strict=True)]))


# ----------------------------------------------------------------------------- MUSE

def test_muse_formulas_by_hand():
    assert muse.cut_at_stops("Lorvik\n\nQuestion: next") == "Lorvik"
    assert muse.cut_at_stops("Lorvik\nQuestion: next") == "Lorvik"
    assert muse.mean_rouge_f1(["the cat sat on the mat", "paris"], ["the cat is on the mat", "Paris, France"]) \
        == pytest.approx((5 / 6 + 2 / 3) / 2)
    assert muse.privleak(0.6, 0.5) == pytest.approx(0.2) and muse.privleak(0.5, 0.0) is None
    icl = load_target(f"muse:news@{FIX / 'muse'}").benchmark.knowmem_icl["forget"]
    assert muse.knowmem_prompt("Who?", icl) == (f"Question: {icl[0].question}\nAnswer: {icl[0].answer}\n\n"
                                                "Question: Who?\nAnswer: ")


def test_muse_scores_match_unbatched_generation(micro):
    from unlearn_audit.metrics.benchmark import benchmark_scores
    from unlearn_audit.metrics.mia import auc, mia_scores

    full, oracle = micro
    t = load_target(f"muse:news@{FIX / 'muse'}")
    tok = full.tokenizer

    def greedy(prompt, n):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = full.model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    b = t.benchmark
    verb = [rouge.rouge_l_scores(greedy(c.prompt, 12).strip(), tok.decode(tok(c.gt)["input_ids"][:12], skip_special_tokens=True))[2]
            for c in b.verbmem]
    assert muse.verbmem(full, b.verbmem, max_new_tokens=12)["rouge_l_f1"] == pytest.approx(np.mean(verb))
    know = [rouge.rouge_l_scores(muse.cut_at_stops(greedy(muse.knowmem_prompt(q.question, b.knowmem_icl["forget"]), 6)), q.answer)[2]
            for q in b.knowmem["forget"]]
    assert muse.knowmem(full, b.knowmem["forget"], b.knowmem_icl["forget"], 6)["rouge_l_f1"] == pytest.approx(np.mean(know))
    # MUSE's AUC ranks holdout above forget: 1 - the member AUC
    s_f = mia_scores(full.model, tok, b.privleak["forget"], k=0.4, max_length=2048)["min_k"]
    s_h = mia_scores(full.model, tok, b.privleak["holdout"], k=0.4, max_length=2048)["min_k"]
    assert muse.muse_auc(full, b.privleak["forget"], b.privleak["holdout"]) == pytest.approx(1 - auc(s_f, s_h))
    ref = benchmark_scores(oracle, t)
    assert benchmark_scores(oracle, t, reference=ref)["privleak"] == 0.0
