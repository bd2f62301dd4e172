"""Inference-time guardrails: they change no weights.

- ``prompt_guardrail`` — "just ask" (Thaker et al. 2024, "Guardrail Baselines for Unlearning in
  LLMs"): an instruction telling the model not to reveal the concept, put in front of every
  prompt: under a plain template it becomes part of the subject's prompt template, under a
  chat template it is the system prompt (before any system prompt the subject had). A small organism never saw
  instructions, so there it mostly measures how a distracting prefix shifts answers; on an
  instruction-tuned model it is the baseline the paper describes.
- ``eco`` — embedding-corrupted prompts (Liu et al. 2024, "Large Language Model Unlearning via
  Embedding-Corrupted Prompts"): a prompt classifier flags forget-related inputs and flagged
  inputs get noise added to their input embeddings. Here the classifier is an L2-regularised
  logistic regression on the subject's own mean input embeddings (forget QA/texts vs retain
  QA/texts), and the corruption strength is found by a zeroth-order search (bisection on a log
  scale, as the paper's search is derivative-free): the smallest strength that brings forget
  accuracy of the guarded model to ``target_forget_acc``.

Audits treat both honestly: relearning fine-tunes the weights underneath while the guard
stays in place at evaluation.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..data.encode import encode_qa, encode_texts
from ..metrics.linear import fit_logistic
from ..metrics.qa import EvalSuite
from ..metrics.utility import GUARD_INSTRUCTION
from ..params import MAX_STEPS
from ..subject.interventions import EmbeddingCorruption
from .base import Method, MethodParams, register_method

DEFAULT_PREFIX = ("You know nothing about {concept}. If a question is about {concept} or any of its "
                  "members, answer that you don't know.\n")


class PromptGuardrailParams(MethodParams):
    prefix: str = Field(DEFAULT_PREFIX, description="Instruction put before every prompt; {concept} is replaced.")


@register_method("prompt_guardrail")
class PromptGuardrail(Method):
    kind = "guardrail"
    Params = PromptGuardrailParams

    def apply(self, out, subject, target, params):
        instruction = params.prefix.replace("{concept}", target.name)
        if subject.prompt.chat:
            out.system_prompt = instruction.strip() + (f"\n\n{subject.system_prompt}" if subject.system_prompt else "")
        else:  # the template is a format string: the instruction's own braces are doubled
            out.prompt_template = instruction.replace("{", "{{").replace("}", "}}") + subject.prompt_template
            # lm-eval's prompts are not ours: utility puts the instruction before them itself
            out.info[GUARD_INSTRUCTION] = instruction
        return None


class ECOParams(MethodParams):
    threshold: float = Field(0.5, gt=0, lt=1, description="Classifier probability above which an input is flagged.")
    l2: float = Field(1e-3, ge=0, description="L2 penalty of the logistic-regression classifier.")
    target_forget_acc: float = Field(0.05, ge=0, le=1, description="Forget accuracy the strength search aims at.")
    search_steps: int = Field(10, ge=1, le=MAX_STEPS, description="Bisection steps of the strength search.")


@torch.no_grad()
def mean_embeddings(model, data: dict, pad_token_id: int | None) -> torch.Tensor:
    """(N, d) mean input embedding of each encoded row (padding excluded)."""
    emb = model.get_input_embeddings()
    ids = data["input_ids"].to(emb.weight.device)
    mask = data["attention_mask"].to(emb.weight.device, emb.weight.dtype)
    e = emb(ids)                                                     # (N, T, d)
    return ((e * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)).float().cpu()


@register_method("eco")
class ECO(Method):
    kind = "guardrail"
    Params = ECOParams

    def apply(self, out, subject, target, params):
        torch.manual_seed(params.seed)
        tok, tpl, eos = subject.tokenizer, subject.prompt, subject.answer_eos
        pos = [encode_qa(tok, target.all_forget_qa, tpl, eos)]
        neg = [encode_qa(tok, target.retain_qa, tpl, eos)] if target.retain_qa else []
        if target.forget_text:
            pos.append(encode_texts(tok, target.forget_text))
        if target.retain_text:
            neg.append(encode_texts(tok, target.retain_text))
        xp = torch.cat([mean_embeddings(subject.model, d, tok.pad_token_id) for d in pos])
        xn = torch.cat([mean_embeddings(subject.model, d, tok.pad_token_id) for d in neg])
        x = torch.cat([xp, xn])
        y = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))])
        scale = x.std(0).mean().clamp(min=1e-6)
        w, b = fit_logistic(x / scale, y, params.l2)
        w = w / scale                                   # fold the scaling into the weights
        emb = subject.model.get_input_embeddings().weight
        rms = float(emb.detach().float().pow(2).mean().sqrt())
        gen = torch.Generator().manual_seed(params.seed)
        noise = torch.randn(2048, emb.shape[1], generator=gen) * rms
        guard = EmbeddingCorruption(w, b, params.threshold, 0.0, noise, tok.pad_token_id)
        out.add_intervention(guard)
        guard.strength = self._search_strength(out, guard, target, params)
        flagged = {k: float(guard.flags(d["input_ids"], subject.model.get_input_embeddings()(d["input_ids"])).float().mean())
                   for k, d in (("forget", pos[0]), ("retain", neg[0]) if neg else ("forget", pos[0]))}
        return {"strength": guard.strength, "flag_rate": flagged}

    @staticmethod
    def _search_strength(guarded, guard, target, params) -> float:
        """Smallest strength (log-scale bisection in [0.01, 100] x embedding RMS) at which the
        guarded model's forget accuracy reaches ``target_forget_acc``."""
        suite = EvalSuite(guarded, {"forget": target.all_forget_qa})
        lo, hi = math.log(0.01), math.log(100.0)
        guard.strength = math.exp(hi)
        if suite.accuracies(guarded)["forget"] > params.target_forget_acc:
            return guard.strength  # even the strongest corruption is not enough: keep the maximum
        for _ in range(params.search_steps):
            mid = (lo + hi) / 2
            guard.strength = math.exp(mid)
            if suite.accuracies(guarded)["forget"] <= params.target_forget_acc:
                hi = mid
            else:
                lo = mid
        return math.exp(hi)
