"""In-context unlearning (ICUL): a context of wrongly answered forget examples, no weight change.

Pawelczyk, Neel & Lakkaraju 2023 ("In-Context Unlearning: Language Models as Few Shot
Unlearners", arXiv:2310.07579) unlearn a training point by putting it in the prompt with a
flipped label, followed by correctly labelled training points, before every query. Their
context, as built by ``MartinPawel/In-Context-Unlearning@e740b1d:eval.py`` (the ``vary`` style,
``get_icl_vary_context_batchsize_gg1``): every forget point rendered as ``<input> <flipped
label>``, then ``n_ctxt - 1`` randomly drawn training points as ``<input> <true label>``, each
followed by a newline, then the query.

The paper's labels are classes (sentiment), so "flipped" is the other class. For QA the
adaptation here is: a forget pair's flipped answer is another value of the *same attribute*
(another city for a birthplace), drawn from the forget and retain QA's answers to that
attribute; items without an attribute (user data) get any other answer of the pool. The
correctly answered pairs are retain QA (the paper's random training points, minus the forget
set). Pairs are drawn once, seeded (``seed``), and are the same for every query:

    context = [q_f1 a'_f1] sep ... [q_fm a'_fm] sep [q_r1 a_r1] sep ... [q_rn a_rn] sep

with m = ``forget_pairs``, n = ``retain_pairs``, each ``[q a]`` the subject's prompt for q, a
space and the answer, and ``sep`` EOS for subjects whose answers end with one (the organism was
trained on EOS-separated documents), else the reference's newline. A forget set larger than m
is represented by a sample (a 7B context cannot hold TOFU's 400 forget questions).

Where the context goes: under a plain template it becomes the start of the subject's prompt
template (braces doubled); under a chat template the pairs, as plain ``Question: ... Answer:``
text, are the system prompt, before any system prompt the subject had. Like the other
guardrails (``prompt_guardrail``, ``eco``) it changes no weight: relearning attacks fine-tune
under it, and internals attacks see the same weights as the original.
"""

from __future__ import annotations

import random

from pydantic import Field

from ..data.encode import (
    DEFAULT_PROMPT_TEMPLATE,
    demonstration_separator,
    demonstrations,
    render_prompt,
    tokenize_prompts,
)
from ..errors import UserInputError
from ..metrics.utility import GUARD_INSTRUCTION
from ..world import QA
from .base import Method, MethodParams, register_method


class ICULParams(MethodParams):
    forget_pairs: int = Field(4, ge=1, le=1000, description="Forget QA pairs in the context, each with a wrong answer.")
    retain_pairs: int = Field(4, ge=0, le=1000, description="Retain QA pairs in the context, correctly answered.")
    separator: str = Field("auto", description="After each pair: auto (EOS for document-style subjects, "
                                               "else a newline, as in the reference) or a string.")


def wrong_answer(item: QA, pool: list[QA], rng: random.Random) -> str:
    """Another answer than ``item``'s: of the same attribute where the pool has one, else any."""
    same = sorted({q.answer for q in pool if item.attribute and q.attribute == item.attribute} - {item.answer})
    others = same or sorted({q.answer for q in pool} - {item.answer})
    if not others:
        raise UserInputError("icul needs at least two different answers in the forget and retain QA to give a "
                             "forget question a wrong one")
    return rng.choice(others)


def icul_pairs(target, params: ICULParams) -> tuple[list[QA], list[QA]]:
    """(forget pairs with wrong answers, retain pairs with true ones), seeded."""
    forget = [q for q in target.all_forget_qa if q.kind == "qa"]
    retain = [q for q in target.retain_qa if q.kind == "qa"]
    if not forget:
        raise UserInputError("icul needs question/answer lines in the forget QA")
    if params.retain_pairs and not retain:
        raise UserInputError("icul needs question/answer lines in the retain QA (or retain_pairs=0)")
    rng = random.Random(f"icul-{params.seed}")
    chosen = rng.sample(forget, min(params.forget_pairs, len(forget)))
    flipped = [QA(q.question, wrong_answer(q, forget + retain, rng), q.kind, q.entity, q.attribute) for q in chosen]
    kept = rng.sample(retain, min(params.retain_pairs, len(retain)))
    return flipped, kept


@register_method("icul")
class ICUL(Method):
    kind = "guardrail"
    Params = ICULParams

    def apply(self, out, subject, target, params):
        flipped, kept = icul_pairs(target, params)
        sep = demonstration_separator(subject, params.separator, fallback="\n")
        if subject.prompt.chat:
            text = demonstrations(flipped + kept, DEFAULT_PROMPT_TEMPLATE, sep)
            out.system_prompt = text.strip() + (f"\n\n{subject.system_prompt}" if subject.system_prompt else "")
        else:  # the template is a format string: the context's own braces are doubled
            text = demonstrations(flipped + kept, subject.prompt_template, sep)
            out.prompt_template = text.replace("{", "{{").replace("}", "}}") + subject.prompt_template
            # lm-eval's prompts are not ours: utility puts the context before them itself
            out.info[GUARD_INSTRUCTION] = text
        probe = QA("?", "?")
        guarded, plain = (len(tokenize_prompts(s.tokenizer, [probe], [render_prompt(probe, s.prompt, s.tokenizer)],
                                               s.prompt)[0]) for s in (out, subject))
        limit = getattr(out.model.config, "max_position_embeddings", None)
        if limit and guarded >= limit:
            raise UserInputError(f"icul: a prompt with the context is {guarded} tokens, the model holds {limit}; "
                                 "use fewer forget_pairs or retain_pairs")
        return {"context_tokens": guarded - plain, "forget_pairs": len(flipped), "retain_pairs": len(kept),
                "context": [{"question": q.question, "answer": q.answer, "flipped": i < len(flipped)}
                            for i, q in enumerate(flipped + kept)]}
