"""Data-parallel evaluation in a 2-process ``torch.distributed`` group (gloo, on CPU): the same
numbers as one process, bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unlearn_audit.world import build_world, qa_pairs, world_config

WORLD = 2


def _subject(tokenizer_dir: str):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from unlearn_audit.subject.subject import Subject

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return Subject(LlamaForCausalLM(config).eval(), tok, "tiny", answer_eos=True)


def _items():
    world = build_world(world_config("micro", 0))
    return [q for e in world.entities.values() for q in qa_pairs(e)]  # 168 rows: 3 batches of 64


def _scores(tokenizer_dir: str, batch_size: int):
    from unlearn_audit.metrics.qa import evaluate_qa

    torch.set_num_threads(1)
    return evaluate_qa(_subject(tokenizer_dir), _items(), batch_size=batch_size)


def _worker(rank: int, tokenizer_dir: str, init_file: str, out: str, batch_size: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from unlearn_audit.metrics.qa import data_parallel

        assert data_parallel() == (rank, WORLD)
        scores = _scores(tokenizer_dir, batch_size)
        torch.save({"correct": scores.correct, "nll": scores.nll}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("batch_size", [16, 64])  # 11 batches (uneven split), 3 batches
def test_qa_scores_in_two_processes_equal_one(tiny_tokenizer, tmp_path, batch_size):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    out = tmp_path / "scores"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tok_dir), str(tmp_path / "init"), str(out), batch_size), nprocs=WORLD, join=True)
    alone = _scores(str(tok_dir), batch_size)
    assert not dist.is_initialized()
    for rank in range(WORLD):  # every process ends with every row
        got = torch.load(Path(f"{out}.{rank}"))
        assert torch.equal(got["correct"], alone.correct)
        assert torch.equal(got["nll"], alone.nll)
    assert len(alone.nll) == len(_items()) and bool((alone.nll > 0).all())
