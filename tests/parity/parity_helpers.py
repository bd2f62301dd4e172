"""Shared inputs of the parity suite (see conftest.py): tiny random Llamas and fixed batches."""

from __future__ import annotations

import torch

VOCAB = 50
PAD = 0


def tiny_llama(seed: int):
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD,
                            bos_token_id=1, eos_token_id=2, initializer_range=0.3)  # peaked, not uniform, distributions
    model = tf.LlamaForCausalLM(config)
    model.eval()
    return model


def qa_batch(seed: int, lengths=((4, 3), (6, 2), (3, 5))) -> dict:
    """Right-padded rows of ``prompt + answer`` random tokens; labels only on the answer
    (-100 elsewhere and on pads), as our ``encode_qa`` lays them out."""
    g = torch.Generator().manual_seed(seed)
    width = max(p + a for p, a in lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    labels = torch.full((len(lengths), width), -100)
    for i, (p, a) in enumerate(lengths):
        row = torch.randint(3, VOCAB, (p + a,), generator=g)
        ids[i, :p + a] = row
        mask[i, :p + a] = 1
        labels[i, p:p + a] = row[p:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
