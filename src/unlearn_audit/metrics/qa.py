"""QA accuracy and answer NLL by teacher forcing: one forward pass per batch, no generation.

An answer counts as correct when, teacher-forced, the argmax at every answer position is the
reference token (and, for subjects whose answers end with EOS, the closing EOS too). That is
exactly "greedy decoding reproduces the reference answer" (and then stops), at the cost of one
forward pass. For a subject without ``answer_eos`` it is "the greedy continuation starts with
the reference answer". NLL is the mean negative log-likelihood per scored token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..data.encode import PromptFormat, encode_qa
from ..distributed import data_parallel, is_sharded, sum_across
from ..world import QA
from .likelihood import IGNORE, eval_mode, forward_logits, token_logprobs

# Rows per forward pass. Rows are sorted by length first, so a smaller batch pads less; on the
# reference shape 64 scores 19% faster than 128 on CPU (0.187 vs 0.231 s for 616 rows), on the
# default organism the same, and a 128k-vocabulary model's logits stay under 1 GB on GPU.
EVAL_BATCH = 64


@dataclass
class QAScores:
    correct: torch.Tensor  # (N,) bool
    nll: torch.Tensor      # (N,) mean NLL per scored token

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self.correct) else float("nan")

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean()) if len(self.nll) else float("nan")


@torch.no_grad()
def score_encoded(model, encoded: Mapping[str, torch.Tensor], batch_size: int = EVAL_BATCH) -> QAScores:
    """Teacher-forced correctness and NLL of every row of a pre-encoded QA set.

    In a ``torch.distributed`` group of W processes, each holding the whole model, process r
    scores batches r, r + W, ... and the rows are summed across processes (every other process
    holds zeros there): the same batches as in one process, so the same numbers, bit for bit. A
    sharded model (FSDP2) needs every process in every forward pass: each scores every batch."""
    device = next(model.parameters()).device
    lengths = encoded["attention_mask"].sum(1)
    order = torch.argsort(lengths, descending=True)  # similar lengths share a batch
    n = len(order)
    correct = torch.zeros(n, dtype=torch.bool)
    nll = torch.zeros(n)
    rank, world = data_parallel()
    if world > 1 and is_sharded(model):
        rank, world = 0, 1
    with eval_mode(model):
        for b, i in enumerate(range(0, n, batch_size)):
            if b % world != rank:
                continue
            idx = order[i:i + batch_size]
            width = int(lengths[idx].max())
            batch = {k: encoded[k][idx, :width].to(device) for k in ("input_ids", "attention_mask", "labels")}
            logits = forward_logits(model, batch)                          # (B, T, V)
            logp, mask = token_logprobs(logits, batch["labels"])           # (B, T-1)
            target = batch["labels"][:, 1:]
            hit = (logits[:, :-1].argmax(-1) == target) | (target == IGNORE)
            correct[idx] = hit.all(1).cpu()
            nll[idx] = (-(logp.sum(1)) / mask.sum(1).clamp(min=1)).float().cpu()
    if world > 1:  # x + 0.0 is x: the sum is exact
        summed = sum_across(torch.stack([correct.float(), nll]))
        correct, nll = summed[0] > 0.5, summed[1]
    return QAScores(correct, nll)


def evaluate_qa(subject, items: Sequence[QA], batch_size: int = EVAL_BATCH) -> QAScores:
    """Accuracy/NLL of ``subject`` on QA items, asked in the subject's own prompt template."""
    encoded = encode_qa(subject.tokenizer, items, subject.prompt, subject.answer_eos)
    return score_encoded(subject.model, encoded, batch_size)


class EvalSuite:
    """Named QA sets encoded once per prompt format, scored on any model sharing the tokenizer.

    Relearning evaluates the same sets at many checkpoints; encoding them once keeps the
    per-checkpoint cost to the forward passes. ``run`` takes a Subject (asked in *its* prompt
    template, so a prompt guardrail stays in place) or a bare model (asked in the template of
    the subject the suite was built with).
    """

    def __init__(self, subject, sets: Mapping[str, Sequence[QA]], batch_size: int = EVAL_BATCH):
        self.names = [k for k, v in sets.items() if len(v)]
        self.sizes = [len(sets[k]) for k in self.names]
        self.items = [q for k in self.names for q in sets[k]]
        self.tokenizer = subject.tokenizer
        self.default_format = (subject.prompt, subject.answer_eos)
        self._encoded: dict[tuple[PromptFormat, bool], dict] = {}
        self.batch_size = batch_size

    def encoded(self, template: PromptFormat, answer_eos: bool) -> dict:
        key = (template, answer_eos)
        if key not in self._encoded:
            self._encoded[key] = encode_qa(self.tokenizer, self.items, template, answer_eos)
        return self._encoded[key]

    def run(self, subject_or_model) -> dict[str, QAScores]:
        if hasattr(subject_or_model, "prompt_template"):
            model = subject_or_model.model
            fmt = (subject_or_model.prompt, subject_or_model.answer_eos)
        else:
            model, fmt = subject_or_model, self.default_format
        scores = score_encoded(model, self.encoded(*fmt), self.batch_size)
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = QAScores(scores.correct[start:start + size], scores.nll[start:start + size])
            start += size
        return out

    def accuracies(self, subject_or_model) -> dict[str, float]:
        return {k: v.accuracy for k, v in self.run(subject_or_model).items()}
