import pytest
import torch
from conftest import FAMILIES

from unlearn_audit.errors import UserInputError
from unlearn_audit.metrics import evaluate_qa
from unlearn_audit.organisms import load_subject
from unlearn_audit.world import QA


@pytest.mark.parametrize("family", FAMILIES)
def test_load_tiny_random_models(tiny_model_dirs, family):
    s = load_subject(tiny_model_dirs[family], device="cpu")
    assert s.tokenizer.pad_token is not None
    assert s.device.type == "cpu" and next(s.model.parameters()).dtype == torch.float32
    assert not s.model.training
    scores = evaluate_qa(s, [QA("Where?", "There"), QA("Who plays the harp?", "Nobody at all")])
    assert scores.correct.shape == (2,) and torch.isfinite(scores.nll).all()


def test_dtype_and_save_roundtrip(tiny_model_dirs, tmp_path):
    s = load_subject(tiny_model_dirs["llama"], device="cpu", dtype="bfloat16")
    assert next(s.model.parameters()).dtype == torch.bfloat16
    s = load_subject(tiny_model_dirs["llama"], device="cpu")
    s.prompt_template = "Q: {question}\nA:"
    s.save(tmp_path / "saved")
    t = load_subject(tmp_path / "saved", device="cpu")
    assert t.prompt_template == "Q: {question}\nA:" and t.path == str((tmp_path / "saved").resolve())
    for a, b in zip(s.model.state_dict().values(), t.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp dir left behind"


def test_bad_paths_and_options(tmp_path, tiny_model_dirs):
    with pytest.raises(UserInputError, match="not a directory"):
        load_subject(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="could not load model"):
        load_subject(tmp_path / "empty")
    with pytest.raises(UserInputError, match="unknown dtype"):
        load_subject(tiny_model_dirs["llama"], dtype="float8")
    with pytest.raises(UserInputError, match="unknown device"):
        load_subject(tiny_model_dirs["llama"], device="tpu9")


def test_pytorch_bin_weights_are_refused(tiny_model_dirs, tmp_path):
    s = load_subject(tiny_model_dirs["llama"], device="cpu")
    (tmp_path / "bin").mkdir()
    s.model.config.save_pretrained(tmp_path / "bin")
    s.tokenizer.save_pretrained(tmp_path / "bin")
    torch.save(s.model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # pickle: never loaded
    with pytest.raises(UserInputError, match="safetensors"):
        load_subject(tmp_path / "bin")


def test_revision_and_model_args_reach_from_pretrained(tiny_model_dirs, monkeypatch):
    import transformers

    seen = {}
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = auto.from_pretrained

        def spy(source, *args, _real=real, _name=auto.__name__, **kwargs):
            seen[_name] = kwargs
            return _real(source, *args, **{k: v for k, v in kwargs.items() if k != "revision"})

        monkeypatch.setattr(auto, "from_pretrained", spy)
    s = load_subject(tiny_model_dirs["llama"], device="cpu", revision="step1000",
                     model_args={"attn_implementation": "eager"})
    assert seen["AutoTokenizer"]["revision"] == "step1000"
    assert seen["AutoModelForCausalLM"]["revision"] == "step1000"
    assert seen["AutoModelForCausalLM"]["attn_implementation"] == "eager"
    assert s.model.config._attn_implementation == "eager"
    with pytest.raises(UserInputError, match="model_args may not set dtype"):
        load_subject(tiny_model_dirs["llama"], device="cpu", model_args={"dtype": "float16"})
    with pytest.raises(UserInputError, match="not the organism"):
        load_subject("organism:micro", revision="main")


def test_an_experiment_passes_revision_and_model_args_for_its_model_only():
    from unlearn_audit.experiment.config import SubjectConfig

    cfg = SubjectConfig(model="EleutherAI/pythia-70m", revision="step3000", model_args={"low_cpu_mem_usage": True})
    assert (cfg.revision, cfg.model_args) == ("step3000", {"low_cpu_mem_usage": True})
    with pytest.raises(ValueError, match="not the organism"):
        SubjectConfig(organism="micro", revision="main")
