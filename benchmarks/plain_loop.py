"""The baseline for the 20-step ``unlearn`` wall time: the same work as a plain script.

Loads a saved causal LM and its tokenizer with the Auto classes, runs ``steps`` steps of
gradient ascent (AdamW lr 1e-5, clip 1.0) on random batches of the reference shape (4 rows x
44 tokens, loss on the last 12), and saves the result with ``save_pretrained``. No toolkit
code, no evaluation. ``bench_steps.py`` times this process next to ``unlearn-audit unlearn``,
so both figures come from the same machine in the same minute.

    python benchmarks/plain_loop.py MODEL_DIR OUT_DIR [--steps 20]
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        ids = torch.randint(2, len(tokenizer), (4, 44), generator=g)
        labels = ids.clone()
        labels[:, :32] = -100
        loss = -model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
