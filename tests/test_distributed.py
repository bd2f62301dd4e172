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
        from unlearn_audit.distributed import data_parallel

        assert data_parallel() == (rank, WORLD)
        scores = _scores(tokenizer_dir, batch_size)
        torch.save({"correct": scores.correct, "nll": scores.nll}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("batch_size", [16])  # 11 batches of 16: an uneven split
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


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def _train(model, optimizer: str, steps=3, k=4):
    """A few steps of the causal-LM loss over a seeded stream of 4-row micro-batches (every
    process draws the same stream): AdamW with clipping (the loop's own), or plain SGD without
    (which, unlike AdamW, a wrong gradient scale moves)."""
    import unlearn_audit.training.loop as loop
    from unlearn_audit.training import TrainConfig, train

    gen = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (4, 12), generator=gen)} for _ in range(steps * k)]
    config = TrainConfig(steps=steps, lr=3e-2 if optimizer == "adamw" else 0.5, grad_accum_steps=k, seed=0,
                         max_grad_norm=0.5 if optimizer == "adamw" else None)
    with pytest.MonkeyPatch.context() as m:
        if optimizer == "sgd":
            m.setattr(loop, "adamw", lambda params, config: torch.optim.SGD(params, lr=config.lr))
        return train(model, lambda b: model(input_ids=b["input_ids"], labels=b["input_ids"]).loss, iter(batches),
                     config)


def _train_worker(rank: int, init_file: str, out: str, sharded: bool, optimizer: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from unlearn_audit.subject.sharding import full_state_dict, shard

        model = _tiny_lm()
        if sharded:
            shard(model)
        log = _train(model, optimizer)
        torch.save({"weights": full_state_dict(model), "losses": log.losses}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "fsdp2"])
def test_training_in_two_processes_equals_one(tmp_path, sharded, optimizer):
    """Each step's 4 micro-batches split 2 + 2 over two processes, gradients summed (a whole
    model in each) or reduce-scattered (FSDP2 shards, gloo on CPU): the same losses and final
    weights as one process computing all four, within float-summation tolerance."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "trained"
    mp.spawn(_train_worker, args=(str(tmp_path / "init"), str(out), sharded, optimizer), nprocs=WORLD, join=True)
    torch.set_num_threads(1)
    model = _tiny_lm()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    log = _train(model, optimizer)
    for rank in range(WORLD):
        got = torch.load(Path(f"{out}.{rank}"))
        assert got["losses"] == pytest.approx(log.losses, rel=1e-6)
        for name, w in model.state_dict().items():
            torch.testing.assert_close(got["weights"][name], w, rtol=0, atol=1e-5)
    assert max(float((w - start[n]).abs().max()) for n, w in model.state_dict().items()) > 1e-2  # it trained


def test_a_step_needs_a_multiple_of_the_processes(monkeypatch):
    import unlearn_audit.distributed as distributed
    import unlearn_audit.training.loop as loop
    from unlearn_audit.errors import UserInputError
    from unlearn_audit.training import TrainConfig, train

    for module in (loop, distributed):  # the loop's view and the check's
        monkeypatch.setattr(module, "data_parallel", lambda: (0, 2))
    with pytest.raises(UserInputError, match="multiple of 2"):
        train(_tiny_lm(), lambda b: None, iter([]), TrainConfig(steps=1, grad_accum_steps=3))


def _unlearn_cli(model_dir: Path, out: Path, processes: int, accum: int = 2):
    """``unlearn`` of gradient difference as a subprocess, under ``torchrun`` with
    ``processes`` > 1: the printed JSON document (the finished process, if it failed)."""
    import json
    import subprocess
    import sys

    args = ["unlearn", "--subject", str(model_dir), "--target", "world:0", "--method", "gradient_difference",
            "--param", "steps=3", "--param", "batch_size=4", "--param", f"grad_accum_steps={accum}",
            "--param", "lr=1e-2", "--device", "cpu", "--out", str(out), "--json"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNLEARN_AUDIT_PROGRESS": "0"}
    done = subprocess.run([*launcher, "-m", "unlearn_audit", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    if done.returncode:
        return done
    return json.loads(done.stdout)


def test_unlearn_under_torchrun_equals_one_process(tiny_model_dirs, tmp_path):
    """``torchrun --nproc_per_node 2 -m unlearn_audit unlearn ...``: one JSON document (only the
    first process prints), one saved model (only it writes), and the one-process run's numbers:
    the same evaluation, bit for bit, and the same weights within 1e-5."""
    from safetensors.torch import load_file

    one = _unlearn_cli(tiny_model_dirs["llama"], tmp_path / "one", 1)
    two = _unlearn_cli(tiny_model_dirs["llama"], tmp_path / "two", 2)
    assert isinstance(one, dict) and isinstance(two, dict), (one, two)
    assert two["before"] == one["before"]
    for name, scores in one["after"]["sets"].items():
        assert two["after"]["sets"][name]["acc"] == scores["acc"]
        assert two["after"]["sets"][name]["nll"] == pytest.approx(scores["nll"], abs=1e-4)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    original = load_file(tiny_model_dirs["llama"] / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    assert any(not torch.equal(a[k], original[k]) for k in a)  # it trained
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    # the processes did share the steps: 3 micro-batches a step cannot be split two ways
    failed = _unlearn_cli(tiny_model_dirs["llama"], tmp_path / "three", 2, accum=3)
    assert failed.returncode and "give grad_accum_steps a multiple of 2" in failed.stderr
    assert not (tmp_path / "three").exists()


def test_commands_that_run_in_one_process_are_refused_under_a_launcher(monkeypatch):
    from test_bad_input import assert_refused, cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, stderr = cli("run", "examples/demo.yaml")
    assert_refused(code, stderr)
    assert "runs in one process" in stderr
