import pytest
import torch

from unlearn_audit.data.encode import encode_qa
from unlearn_audit.errors import TrainingDiverged, UserInputError
from unlearn_audit.metrics.likelihood import mean_token_nll
from unlearn_audit.training import TrainConfig, shuffled_minibatches, train
from unlearn_audit.training.loop import lr_factor


def _first_losses(micro, micro_target, seed, steps=3):
    s = micro[1].copy()
    data = encode_qa(s.tokenizer, micro_target.forget_qa, s.prompt_template, True)
    log = train(s.model, lambda b: mean_token_nll(s.model, b),
                shuffled_minibatches(data, 8, seed), TrainConfig(steps=steps, lr=1e-3, seed=seed))
    return log.losses, s


def test_same_seed_same_losses_other_seed_other_order(micro, micro_target):
    a, _ = _first_losses(micro, micro_target, 0)
    b, _ = _first_losses(micro, micro_target, 0)
    c, _ = _first_losses(micro, micro_target, 1)
    assert a == b
    assert a != c


def test_training_lowers_the_loss(micro, micro_target):
    losses, _ = _first_losses(micro, micro_target, 0, steps=30)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_nan_lr_gives_clear_error_and_keeps_log(micro, micro_target):
    s = micro[0].copy()
    data = encode_qa(s.tokenizer, micro_target.forget_qa, s.prompt_template, True)
    # gradient ascent with a huge lr and no clipping diverges within a few steps
    with pytest.raises(TrainingDiverged, match="lower the learning rate") as e:
        train(s.model, lambda b: -mean_token_nll(s.model, b), shuffled_minibatches(data, 8, 0),
              TrainConfig(steps=20, lr=1e3, max_grad_norm=None))
    assert 1 <= len(e.value.log) < 20
    with pytest.raises(UserInputError, match="learning rate"):
        train(s.model, lambda b: mean_token_nll(s.model, b), shuffled_minibatches(data, 8, 0),
              TrainConfig(steps=2, lr=float("nan")))


def test_lr_schedule():
    c = TrainConfig(steps=10, warmup_steps=2, schedule="linear")
    assert [round(lr_factor(s, c), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    c = TrainConfig(steps=10, schedule="cosine")
    assert lr_factor(0, c) == 1.0 and abs(lr_factor(5, c) - 0.5) < 1e-9


def test_minibatches_cover_each_epoch():
    data = {"input_ids": torch.arange(10).view(10, 1), "attention_mask": torch.ones(10, 1, dtype=torch.long),
            "labels": torch.arange(10).view(10, 1)}
    it = shuffled_minibatches(data, 5, seed=0)
    seen = torch.cat([next(it)["input_ids"] for _ in range(2)]).flatten().tolist()
    assert sorted(seen) == list(range(10))


def _tiny_llama(seed=0):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0)
    return tf.LlamaForCausalLM(cfg)


def _rows(n=8, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _gradient(config: TrainConfig, batches) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the (last) optimiser step, read in ``on_step``; the loop
    frees the gradients when it ends."""
    model = _tiny_llama()
    grads = {}
    train(model, lambda b: mean_token_nll(model, b), iter(batches), config,
          on_step=lambda step, loss: grads.update({n: p.grad.clone() for n, p in model.named_parameters()}))
    assert all(p.grad is None for p in model.parameters())
    return grads


def test_gradient_accumulation_equals_one_batch_k_times_the_size():
    # equal-length rows, every token labelled: the mean of the 4 micro-batch means is the batch mean
    data = _rows()
    micro = [{k: v[i:i + 2] for k, v in data.items()} for i in range(0, 8, 2)]
    one = _gradient(TrainConfig(steps=1, lr=1e-3, max_grad_norm=None), [data])
    four = _gradient(TrainConfig(steps=1, lr=1e-3, max_grad_norm=None, grad_accum_steps=4), micro)
    assert max(float((one[n] - four[n]).abs().max()) for n in one) <= 1e-6
    just_first = _gradient(TrainConfig(steps=1, lr=1e-3, max_grad_norm=None), micro[:1])
    assert max(float((one[n] - just_first[n]).abs().max()) for n in one) > 1e-3  # the check can fail


def test_gradient_checkpointing_changes_no_gradient_and_is_switched_off_after():
    data = _rows()
    plain = _gradient(TrainConfig(steps=1, lr=1e-3, max_grad_norm=None), [data])
    model = _tiny_llama()
    during, grads = [], {}

    def on_step(step, loss):
        during.append(any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))
        grads.update({n: p.grad.clone() for n, p in model.named_parameters()})

    train(model, lambda b: mean_token_nll(model, b), iter([data]),
          TrainConfig(steps=1, lr=1e-3, max_grad_norm=None, gradient_checkpointing=True), on_step=on_step)
    assert during == [True]                                       # it was on while training
    assert max(float((plain[n] - grads[n]).abs().max()) for n in plain) <= 1e-6
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_methods_and_relearning_take_the_batching_knobs(micro, micro_target):
    from unlearn_audit.api import unlearn
    from unlearn_audit.attacks import get_attack

    u = unlearn(micro[0], micro_target, "gradient_ascent", steps=2, grad_accum_steps=2, gradient_checkpointing=True)
    assert u.info["method"]["params"]["grad_accum_steps"] == 2
    assert get_attack("rtt").params({"grad_accum_steps": 4}).grad_accum_steps == 4
    with pytest.raises(UserInputError, match="grad_accum_steps"):
        unlearn(micro[0], micro_target, "gradient_ascent", grad_accum_steps=0)


def test_max_length_truncates_the_texts_methods_and_relearning_train_on(micro, micro_target):
    from unlearn_audit.attacks.relearn import RELEARNING, _train_data
    from unlearn_audit.methods import get_method

    m = get_method("gradient_difference")
    full = m.forget_data(micro[0], micro_target, m.params({"forget_on": "text"}))
    short = m.forget_data(micro[0], micro_target, m.params({"forget_on": "text", "max_length": 16}))
    assert full["input_ids"].shape[1] > 16 and short["input_ids"].shape[1] == 16
    assert torch.equal(short["input_ids"][:, :8], full["input_ids"][:, :8])   # the same texts, cut
    assert m.retain_data(micro[0], micro_target, 16)[-1]["input_ids"].shape[1] == 16   # [qa, texts]: texts cut
    assert _train_data(micro[0], micro_target, RELEARNING["forget_data"], 16)["input_ids"].shape[1] == 16


def _trained(dtype, steps, masters_seen=None, lr=1e-5):
    """A tiny Llama with N(0, 0.02) weights in ``dtype`` after ``steps`` steps at ``lr`` (the
    TOFU/NPO rate) on one batch; returns (model, its weights before)."""
    model = _tiny_llama()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.to(dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = _rows()
    train(model, lambda b: mean_token_nll(model, b), iter([data] * steps), TrainConfig(steps=steps, lr=lr))
    return model, before


def _relative_error(update, reference) -> float:
    num = sum(float((update[n].float() - reference[n]).norm()) ** 2 for n in reference) ** 0.5
    return num / sum(float(r.norm()) ** 2 for r in reference.values()) ** 0.5


def test_bf16_trains_float32_masters_whose_update_is_the_float32_runs(monkeypatch):
    from unlearn_audit.training import loop

    masters = []
    free = loop.MasterWeights.free
    monkeypatch.setattr(loop.MasterWeights, "free",
                        lambda self: (masters.append([(p, m.clone()) for p, m in self.pairs]), free(self)))
    for steps in (1, 20):
        f32, f32_before = _trained(torch.float32, steps)
        reference = {n: p.detach() - f32_before[n] for n, p in f32.named_parameters()}
        bf16, before = _trained(torch.bfloat16, steps)
        name = {id(p): n for n, p in bf16.named_parameters()}
        master = {name[id(p)]: m for p, m in masters[-1]}
        assert set(master) == set(reference) and all(m.dtype == torch.float32 for m in master.values())
        # what was trained is float32: its update is the float32 run's, to the bf16 forward's noise
        assert _relative_error({n: m - before[n].float() for n, m in master.items()}, reference) < 0.05
        moved = sum(int((p != 0).sum()) for p in reference.values())
        assert sum(int((m != before[n].float()).sum()) for n, m in master.items()) >= 0.99 * moved
        # and the model holds it rounded to bf16, its own dtype
        assert all(p.dtype == torch.bfloat16 and torch.equal(p.detach(), master[n].bfloat16())
                   for n, p in bf16.named_parameters())
    # stepping the bf16 weights themselves rounds most of the update away (the check can fail)
    monkeypatch.setattr(loop.MasterWeights, "LOW", ())
    plain, before = _trained(torch.bfloat16, 20)
    assert _relative_error({n: p.detach() - before[n] for n, p in plain.named_parameters()}, reference) > 0.5
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in plain.named_parameters())
    assert changed < 0.2 * moved


def test_fp16_scales_the_loss_and_skips_an_overflowing_step():
    data = _rows()

    def run(steps, overflow_first):
        model = _tiny_llama().to(torch.float16)
        calls = []

        def loss_fn(b):  # x1e4: the first step's gradients overflow float16 once scaled (2^16)
            calls.append(1)
            return mean_token_nll(model, b) * (1e4 if overflow_first and len(calls) == 1 else 1.0)

        log = train(model, loss_fn, iter([data] * steps), TrainConfig(steps=steps, lr=1e-3))
        assert log.steps == steps and all(p.dtype == torch.float16 for p in model.parameters())
        return model

    skipped, two = run(3, True), run(2, False)
    untouched = _tiny_llama().to(torch.float16)
    # the overflowing step changed nothing: the other two steps are a plain 2-step run's
    # (the scale halves in between, a power of two that unscaling undoes exactly)
    assert all(torch.equal(a, b) for a, b in zip(skipped.parameters(), two.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(two.parameters(), untouched.parameters(), strict=True))
