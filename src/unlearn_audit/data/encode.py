"""Tokenise targets into padded tensors once, so training and evaluation loops do no Python
work per example.

QA items become ``input_ids`` / ``attention_mask`` / ``labels`` with labels ``-100`` on the
prompt and padding, so a loss or a metric sees only the answer tokens (and the closing EOS
when the subject's answers end with one). Right padding throughout (teacher forcing).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..world import QA

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
CHAT = "chat"  # the prompt template that means: the tokenizer's own chat template
IGNORE = -100


@dataclass(frozen=True)
class PromptFormat:
    """How a question is put to a subject.

    Attributes:
        template: ``"chat"`` (the tokenizer's ``chat_template``, with the generation prompt), or
            a format string whose one field is ``{question}`` (literal braces doubled).
        system_prompt: a system turn (chat), or a first line before the prompt (plain template).
        prefix: text put right before the question: before the whole rendered prompt under a
            plain template, at the start of the user turn under chat (in-context demonstrations
            as text, an adversarial instruction).
        turns: earlier (question, answer) exchanges, as user/assistant turns (chat only: a plain
            template's demonstrations are text in ``prefix``).
    """

    template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = None
    prefix: str = ""
    turns: tuple[tuple[str, str], ...] = ()

    @property
    def chat(self) -> bool:
        return self.template == CHAT

    @property
    def answer_separator(self) -> str:
        """Between the prompt and the answer: a space after ``Answer:``; nothing after a chat
        template's assistant header, which ends where the reply starts."""
        return "" if self.chat else " "

    def render(self, question: str, tokenizer=None) -> str:
        if not self.chat:
            head = f"{self.system_prompt}\n" if self.system_prompt else ""
            return head + self.prefix + self.template.format(question=question)
        turns = [m for q, a in self.turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        turns.append({"role": "user", "content": self.prefix + question})
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        from jinja2 import TemplateError  # transformers renders chat templates with jinja2

        try:
            return tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, tokenize=False)
        except TemplateError:  # some templates (Gemma, early Mistral) refuse a system role
            if not system:
                raise
        turns[0] = {"role": "user", "content": f"{self.system_prompt}\n\n{turns[0]['content']}"}
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)


def as_format(prompt: PromptFormat | str) -> PromptFormat:
    """A prompt format from a format or a plain template string."""
    return prompt if isinstance(prompt, PromptFormat) else PromptFormat(prompt)


def check_prompt_template(template, where: str, tokenizer=None) -> str:
    """``template`` if it is ``"chat"`` (and ``tokenizer``, when given, has a chat template) or a
    string whose only field is ``{question}`` (one-line error else)."""
    import string

    from ..errors import UserInputError

    if template == CHAT:
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise UserInputError(f"{where}: prompt_template chat needs a tokenizer with a chat_template, and this "
                                 "one has none; give a plain template such as 'Question: {question}\\nAnswer:'")
        return template
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None} if isinstance(template, str) else None
    except ValueError as e:
        raise UserInputError(f"{where}: prompt_template {template!r} is not a format string ({e}); "
                             "write e.g. 'Question: {{question}}\\nAnswer:' (double braces for literal ones)") from None
    if fields is None or fields - {"question"}:
        bad = ", ".join(sorted(f"{{{f}}}" for f in (fields or set()) - {"question"})) or "not a string"
        raise UserInputError(f"{where}: prompt_template may only use {{question}}, not {bad}")
    return template


def render_prompt(item: QA, prompt: PromptFormat | str, tokenizer=None) -> str:
    """A QA item's prompt in ``prompt``'s format; a completion item is raw text, its own prompt."""
    return item.question if item.kind == "completion" else as_format(prompt).render(item.question, tokenizer)


def demonstrations(items: Sequence[QA], template: PromptFormat | str, separator: str) -> str:
    """Question/answer pairs as text: each prompt in ``template``, a space, its answer, then
    ``separator`` (in-context demonstrations, and in-context unlearning's context)."""
    return "".join(render_prompt(q, template) + " " + q.answer + separator for q in items)


def demonstration_separator(subject, separator: str = "auto", fallback: str = "\n\n") -> str:
    """``separator``, or for ``"auto"``: EOS where the subject's answers end with it (it was
    trained on documents, like the organism), else ``fallback``."""
    if separator != "auto":
        return separator
    eos = subject.tokenizer.eos_token
    return eos if subject.answer_eos and eos else fallback


def tokenize_prompts(tokenizer, items: Sequence[QA], prompts: Sequence[str], prompt: PromptFormat | str) -> list[list[int]]:
    """Token ids of rendered prompts. A chat template writes its own special tokens (BOS), so
    its prompts are tokenised without adding them; raw text (completions, plain templates) as
    the tokenizer does by default."""
    chat = [as_format(prompt).chat and q.kind != "completion" for q in items]
    if not any(chat):
        return tokenizer(list(prompts))["input_ids"]
    out = [None] * len(prompts)
    for flag in (True, False):
        rows = [i for i, c in enumerate(chat) if c == flag]
        if rows:
            ids = tokenizer([prompts[i] for i in rows], add_special_tokens=not flag)["input_ids"]
            for i, r in zip(rows, ids, strict=True):
                out[i] = r
    return out


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode_qa(tokenizer, items: Sequence[QA], template: PromptFormat | str = DEFAULT_PROMPT_TEMPLATE,
              answer_eos: bool = False) -> dict[str, torch.Tensor]:
    """Encode prompts + answers; labels mark the answer tokens (+ EOS if ``answer_eos``, for
    ``kind="qa"`` items only).

    The answer is tokenised in context (``prompt + " " + answer``; no space after a chat
    template's assistant header) and the prompt's tokens are masked; if the tokeniser merges
    across the boundary, the answer is tokenised on its own.
    """
    fmt = as_format(template)
    prompts = [render_prompt(q, fmt, tokenizer) for q in items]
    gaps = [fmt.answer_separator if q.kind != "completion" else " " for q in items]
    fulls = [p + gap + q.answer for p, gap, q in zip(prompts, gaps, items, strict=True)]
    p_ids = tokenize_prompts(tokenizer, items, prompts, fmt)
    f_ids = tokenize_prompts(tokenizer, items, fulls, fmt)
    eos_qa = [tokenizer.eos_token_id] if answer_eos and tokenizer.eos_token_id is not None else []
    rows, labels = [], []
    for p, f, q, gap in zip(p_ids, f_ids, items, gaps, strict=True):
        eos = eos_qa if q.kind == "qa" else []  # a completion's sentence goes on after the value
        if f[: len(p)] == p and len(f) > len(p):
            answer = f[len(p):]
        else:
            answer = tokenizer(gap + q.answer, add_special_tokens=False)["input_ids"]
        ids = list(p) + list(answer) + eos
        rows.append(ids)
        labels.append([IGNORE] * len(p) + list(answer) + eos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = _pad(rows, pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": _pad([[1] * len(r) for r in rows], 0),
        "labels": _pad(labels, IGNORE),
    }


def encode_texts(tokenizer, texts: Sequence[str], max_length: int = 256,
                 add_eos: bool = True) -> dict[str, torch.Tensor]:
    """Encode documents for a full-text loss: every real token after the first is a label."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length - int(add_eos))["input_ids"]
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    rows = [list(r) + eos for r in ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        "input_ids": _pad(rows, pad_id),
        "attention_mask": _pad([[1] * len(r) for r in rows], 0),
        "labels": _pad(rows, IGNORE),
    }


def pack_texts(tokenizer, docs: Sequence[str], seq_len: int, rng: random.Random) -> torch.Tensor:
    """Shuffle documents, join them with EOS and cut into rows of ``seq_len`` tokens.

    Returns ``(N, seq_len)`` token ids; the tail shorter than a row is dropped.
    """
    order = list(range(len(docs)))
    rng.shuffle(order)
    encoded = tokenizer([docs[i] for i in order], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in encoded:
        stream.append(eos)
        stream.extend(ids)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def concat_batches(*batches: dict[str, torch.Tensor], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack encoded batches with different widths into one (right-padded)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    out = {}
    for k, v in fill.items():
        out[k] = torch.cat([torch.nn.functional.pad(b[k], (0, width - b[k].shape[1]), value=v)
                            for b in batches])
    return out


def trim(batch: dict) -> dict:
    """Drop padding columns that no row of this batch uses (per-row tensors and nested
    encodings, e.g. a preference pair's ``chosen`` side, stay as they are)."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 else v for k, v in batch.items()}


def take(batch: dict, index: torch.Tensor | slice) -> dict:
    """Rows ``index`` of an encoded set (nested encodings too), trimmed."""
    return trim({k: take(v, index) if isinstance(v, dict) else v[index] for k, v in batch.items()})


def to_device(batch: dict, device) -> dict:
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}
