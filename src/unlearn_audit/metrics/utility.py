"""General utility through lm-evaluation-harness (the ``lm_eval`` extra): MMLU, ARC, ... on the
original, the oracle and every unlearned model, as unlearning papers report it next to forget
quality (TOFU's and MUSE's utility columns; WMDP reports MMLU beside its own accuracy).

The subject is evaluated through lm-eval's own Hugging Face wrapper (``HFLM``, given the
subject's model and tokenizer), so its hooks stay in place: unbaked steering vectors and the
ECO guardrail's embedding corruption act on every request. A prompt guardrail is an
instruction, not a hook: it reaches lm-eval as the system instruction, which lm-eval puts in
the chat template's system turn (subjects asked through ``chat``) or before the prompt.

Scores are lm-eval's own, keyed ``<task>/<metric>`` with the filter name dropped
(``arc_easy/acc``, ``arc_easy/acc_norm``); standard errors and document counts are left out.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserInputError
from ..params import UtilityConfig

GUARD_INSTRUCTION = "guard_instruction"  # Subject.info key: a prompt guardrail's instruction


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise UserInputError("utility: lm_eval needs lm-evaluation-harness: pip install 'unlearn-audit[lmeval]'") from None
    return lm_eval


def task_manager(config: UtilityConfig):
    """lm-eval's task index, with ``include_path``'s tasks; unknown task names fail here."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if config.include_path is not None and not Path(config.include_path).expanduser().is_dir():
        raise UserInputError(f"utility.include_path {config.include_path!r} is not a directory of task YAML files")
    manager = TaskManager(include_path=str(Path(config.include_path).expanduser()) if config.include_path else None)
    unknown = [t for t in config.lm_eval if t not in manager.all_tasks]
    if unknown:
        raise UserInputError(f"utility: lm-eval has no task {', '.join(map(repr, unknown))}; "
                             "`lm-eval ls tasks` lists them, or give include_path for your own")
    return manager


def lm_eval_scores(subject, config: UtilityConfig, manager=None) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` of lm-eval's ``simple_evaluate`` on ``subject``."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = manager or task_manager(config)
    # lm-eval's own default (None: "the tokenizer's") has changed meaning across transformers
    # releases; say it: prompts start with BOS exactly when the subject's tokenizer adds one,
    # as in every other prompt this package encodes
    tok = subject.tokenizer
    adds_bos = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
    lm = HFLM(pretrained=subject.model, tokenizer=tok, batch_size=config.batch_size, add_bos_token=adds_bos)
    chat = subject.prompt.chat
    instruction = subject.system_prompt if chat else subject.info.get(GUARD_INSTRUCTION)
    limit = int(config.limit) if config.limit is not None and config.limit >= 1 else config.limit
    was_training = subject.model.training
    try:
        res = simple_evaluate(model=lm, tasks=list(config.lm_eval), num_fewshot=config.num_fewshot, limit=limit,
                              task_manager=manager, log_samples=False, bootstrap_iters=0,
                              system_instruction=instruction, apply_chat_template=chat,
                              random_seed=config.seed, numpy_random_seed=config.seed,
                              torch_random_seed=config.seed, fewshot_random_seed=config.seed)
    finally:
        subject.model.train(was_training)
    out = {}
    for task, metrics in res["results"].items():
        for key, value in metrics.items():
            name = key.split(",")[0]
            if (name.endswith("_stderr") or name == "sample_len" or isinstance(value, bool)
                    or not isinstance(value, int | float)):
                continue
            out[f"{task}/{name}"] = float(value) if math.isfinite(value) else None
    return out
