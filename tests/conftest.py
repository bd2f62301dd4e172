"""Shared fixtures: the micro organism (trained once per cache) and tiny random HF models.

The organism cache defaults to ``.cache/test-organisms`` in the repository (gitignored) so
local re-runs skip training; a clean clone (CI) trains it once, in about 30 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("UNLEARN_AUDIT_TEST_CACHE", REPO / ".cache" / "test-organisms"))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="session")
def micro(cache_dir):
    """(full, oracle) micro organisms; the oracle never saw concept 0."""
    import torch

    from unlearn_audit.organisms import organism

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return organism("micro", 0, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def micro_target(micro):
    from unlearn_audit.api import target_for

    return target_for("world:0", micro[0])


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained on the micro world, saved locally."""
    from unlearn_audit.organisms import train_tokenizer
    from unlearn_audit.world import build_world, corpus, world_config

    tok = train_tokenizer(corpus(build_world(world_config("micro", 0))), 384)
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return tok


def tiny_config(family: str, vocab_size: int, pad_id: int, eos_id: int):
    """Random-init configs of several architecture families: hidden 32, 2 layers."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128, **common)
    if family == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "gemma":
        return tf.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=8,
                              num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "olmo":
        return tf.OlmoConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, **common)
    if family == "phi":
        return tf.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, **common)
    if family == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                            word_embed_proj_dim=32, max_position_embeddings=128, **common)
    raise ValueError(family)


FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "gemma", "olmo", "phi", "opt"]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer):
    """family -> directory of a random tiny model + tokenizer saved with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        cfg = tiny_config(family, len(tiny_tokenizer), tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id)
        model = AutoModelForCausalLM.from_config(cfg)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path, safe_serialization=True)
        tiny_tokenizer.save_pretrained(path)
        out[family] = path
    return out


@pytest.fixture(scope="session")
def matrix_reference(micro, cache_dir, tmp_path_factory):
    """The experiment of ``matrix.py`` run uninterrupted, in this process: (run directory, outcome)."""
    from matrix import SETTINGS, write_experiment

    from unlearn_audit.experiment.config import load_experiment
    from unlearn_audit.experiment.runner import run_experiment

    os.environ["UNLEARN_AUDIT_CACHE"] = str(cache_dir)
    root = tmp_path_factory.mktemp("reference")
    exp, text = load_experiment(write_experiment(root / "exp.yaml", root / "run"))
    run = run_experiment(exp, text)
    assert run.computed == SETTINGS and run.reused == []
    return root / "run", run


@pytest.fixture(scope="module")
def models():
    """The parity suite's (model, reference): two random tiny Llamas (hidden 32, 2 layers), the
    second playing the frozen original (tests/parity; a conftest there would shadow this one's
    name for the ``from conftest import`` of other tests)."""
    from parity_helpers import tiny_llama  # tests/parity is on sys.path when its tests run

    return tiny_llama(0), tiny_llama(1)
