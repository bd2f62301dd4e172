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
