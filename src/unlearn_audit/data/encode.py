"""Tokenise targets into padded tensors once, so training and evaluation loops do no Python
work per example.

QA items become ``input_ids`` / ``attention_mask`` / ``labels`` with labels ``-100`` on the
prompt and padding, so a loss or a metric sees only the answer tokens (and the closing EOS
when the subject's answers end with one). Right padding throughout (teacher forcing).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ..world import QA

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
IGNORE = -100


def check_prompt_template(template, where: str) -> str:
    """``template`` if it is a string whose only field is ``{question}`` (one-line error else)."""
    import string

    from ..errors import UserInputError

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None} if isinstance(template, str) else None
    except ValueError as e:
        raise UserInputError(f"{where}: prompt_template {template!r} is not a format string ({e}); "
                             "write e.g. 'Question: {{question}}\\nAnswer:' (double braces for literal ones)") from None
    if fields is None or fields - {"question"}:
        bad = ", ".join(sorted(f"{{{f}}}" for f in (fields or set()) - {"question"})) or "not a string"
        raise UserInputError(f"{where}: prompt_template may only use {{question}}, not {bad}")
    return template


def render_prompt(item: QA, template: str) -> str:
    return item.question if item.kind == "completion" else template.format(question=item.question)


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode_qa(tokenizer, items: Sequence[QA], template: str = DEFAULT_PROMPT_TEMPLATE,
              answer_eos: bool = False) -> dict[str, torch.Tensor]:
    """Encode prompts + answers; labels mark the answer tokens (+ EOS if ``answer_eos``, for
    ``kind="qa"`` items only).

    The answer is tokenised in context (``prompt + " " + answer``) and the prompt's tokens are
    masked; if the tokeniser merges across the boundary, the answer is tokenised on its own.
    """
    prompts = [render_prompt(q, template) for q in items]
    fulls = [p + " " + q.answer for p, q in zip(prompts, items, strict=True)]
    p_ids = tokenizer(prompts)["input_ids"]
    f_ids = tokenizer(fulls)["input_ids"]
    eos_qa = [tokenizer.eos_token_id] if answer_eos and tokenizer.eos_token_id is not None else []
    rows, labels = [], []
    for p, f, q in zip(p_ids, f_ids, items, strict=True):
        eos = eos_qa if q.kind == "qa" else []  # a completion's sentence goes on after the value
        if f[: len(p)] == p and len(f) > len(p):
            answer = f[len(p):]
        else:
            answer = tokenizer(" " + q.answer, add_special_tokens=False)["input_ids"]
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
