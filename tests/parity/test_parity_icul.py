"""In-context unlearning's context against the reference code's construction (re-derived here).

Reference: MartinPawel/In-Context-Unlearning@e740b1d6995704c05304045079d3b03f73b86b4b:eval.py,
``get_icl_vary_context_batchsize_gg1`` (the ``vary`` style with several forget points): every
forget point's text, a space, its flipped label and a newline; then ``n_ctxt - 1`` context points'
text, a space, their true label and a newline; then the query's text. Our adaptation gives each
pair's text as the subject's prompt for its question, and the flipped label a wrong answer of
the same attribute (``methods/icul.py``); with a newline separator the strings must agree.
"""

from __future__ import annotations

from unlearn_audit.api import unlearn
from unlearn_audit.methods.icul import ICULParams, icul_pairs


def reference_context(forget_texts, flipped_labels, context_texts, context_labels, query_text):
    """The reference's string building, for a batch of forget points and ``n_ctxt - 1`` others."""
    post = ""
    for text, label in zip(forget_texts, flipped_labels, strict=True):
        post += text + " " + label + "\n"
    for text, label in zip(context_texts, context_labels, strict=True):
        post += text + " " + label + "\n"
    return post + query_text


def test_icul_context_is_the_references_vary_context(micro, micro_target):
    params = ICULParams(forget_pairs=3, retain_pairs=2, separator="\n", seed=1)
    flipped, kept = icul_pairs(micro_target, params)
    guarded = unlearn(micro[0], micro_target, "icul", **params.model_dump())
    prompt = micro[0].prompt  # the organism's plain template: each pair's text is its prompt
    expected = reference_context([prompt.render(q.question) for q in flipped], [q.answer for q in flipped],
                                 [prompt.render(q.question) for q in kept], [q.answer for q in kept],
                                 prompt.render("Where?"))
    assert guarded.prompt.render("Where?") == expected
    truth = {q.question: q.answer for q in micro_target.all_forget_qa}
    assert all(q.answer != truth[q.question] for q in flipped)  # the "flipped" labels
