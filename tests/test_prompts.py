"""Prompt formats: a tokenizer's chat template (issue 14, item 5), plain templates with literal
braces, system prompts, and the guardrail and in-context prompts that go through them."""

from __future__ import annotations

import copy
import shutil

import pytest

from unlearn_audit.data.encode import IGNORE, PromptFormat, encode_qa
from unlearn_audit.errors import UserInputError
from unlearn_audit.world import QA

# the shapes of three families' templates: Zephyr (<|user|> ... </s>), ChatML (Qwen, OLMo-2
# instruct) with a system turn, and Llama-2-chat ([INST] with <<SYS>>, opening with BOS)
ZEPHYR = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA2 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
          "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }} "
          "{{ eos_token }}{% endif %}{% endfor %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
             "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _with_template(tokenizer, template):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def _ids(out):
    """``apply_chat_template(tokenize=True)``'s ids (a list, or a mapping in newer transformers)."""
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


ITEMS = [QA("Where does Ada live?", "Paris"), QA("What is Ada's job?", "baker"),
         QA("Ada lives in", "Paris", "completion")]


@pytest.mark.parametrize("template", [ZEPHYR, CHATML, LLAMA2], ids=["zephyr", "chatml", "llama2"])
@pytest.mark.parametrize("system", [None, "Answer briefly."])
def test_chat_prompts_are_apply_chat_template_with_the_generation_prompt(tiny_tokenizer, template, system):
    tok = _with_template(tiny_tokenizer, template)
    fmt = PromptFormat("chat", system)
    data = encode_qa(tok, ITEMS, fmt, answer_eos=False)
    for row, q in enumerate(ITEMS):
        ids = data["input_ids"][row][data["attention_mask"][row].bool()].tolist()
        labelled = (data["labels"][row] != IGNORE).nonzero().flatten().tolist()
        prompt = ids[:labelled[0]]
        if q.kind == "completion":  # raw text: its own prompt, tokenised as text
            assert prompt == tok(q.question)["input_ids"]
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q.question}]
        assert prompt == _ids(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        # the answer follows the assistant header directly (no space a plain template puts after "Answer:")
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ids == tok(rendered + q.answer, add_special_tokens=False)["input_ids"]


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, NO_SYSTEM)
    text = PromptFormat("chat", "Be brief.").render("Where?", tok)
    assert text == "<|user|>Be brief.\n\nWhere?\n<|assistant|>"
    with pytest.raises(Exception, match="no system role"):  # the template's own refusal, not swallowed
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_plain_templates_keep_literal_braces_and_put_the_system_prompt_first(tiny_tokenizer):
    fmt = PromptFormat('{{"task": "qa"}} Q: {question}\nA:', "You are terse.")
    assert fmt.render("Where?") == 'You are terse.\n{"task": "qa"} Q: Where?\nA:'
    plain = encode_qa(tiny_tokenizer, ITEMS[:1], "Q: {question}\nA:")
    text = tiny_tokenizer.decode(plain["input_ids"][0])
    assert text.endswith("Q: Where does Ada live?\nA: Paris")   # a space before the answer


def test_loading_defaults_to_chat_when_the_tokenizer_has_a_template(tiny_model_dirs, tmp_path):
    from unlearn_audit.subject import load_pretrained

    plain = load_pretrained(tiny_model_dirs["llama"], device="cpu")
    assert plain.prompt_template == "Question: {question}\nAnswer:" and not plain.prompt.chat
    chat_dir = tmp_path / "chat"
    shutil.copytree(tiny_model_dirs["llama"], chat_dir)
    _with_template(plain.tokenizer, CHATML).save_pretrained(chat_dir)
    chat = load_pretrained(chat_dir, device="cpu")
    assert chat.prompt.chat and chat.system_prompt is None
    mine = load_pretrained(chat_dir, device="cpu", prompt_template="Q: {question}\nA:", system_prompt="Be brief.")
    assert mine.prompt == PromptFormat("Q: {question}\nA:", "Be brief.")
    # what a saved subject was asked in comes back with it
    mine.save(tmp_path / "saved")
    assert load_pretrained(tmp_path / "saved", device="cpu").prompt == mine.prompt
    with pytest.raises(UserInputError, match="chat needs a tokenizer with a chat_template"):
        load_pretrained(tiny_model_dirs["llama"], device="cpu", prompt_template="chat")
    with pytest.raises(UserInputError, match=r"may only use \{question\}"):
        load_pretrained(tiny_model_dirs["llama"], device="cpu", prompt_template="{q}")


def test_the_organism_refuses_another_template(micro):
    from unlearn_audit.organisms import load_subject

    with pytest.raises(UserInputError, match="trained on"):
        load_subject("organism:micro", prompt_template="chat")


def _chat_subject(micro, template=CHATML, system=None):
    s = micro[0].copy()
    s.tokenizer = _with_template(s.tokenizer, template)
    s.prompt_template, s.system_prompt = "chat", system
    return s


def test_the_prompt_guardrail_is_the_system_prompt_under_chat(micro, micro_target):
    from unlearn_audit.api import unlearn

    guarded = unlearn(_chat_subject(micro, system="Be brief."), micro_target, "prompt_guardrail",
                      prefix="Never discuss {concept}. {not a field}\n")
    assert guarded.prompt_template == "chat"
    assert guarded.system_prompt == f"Never discuss {micro_target.name}. {{not a field}}\n\nBe brief."
    rendered = guarded.prompt.render("Where?", guarded.tokenizer)
    assert rendered.startswith(f"<|im_start|>system\nNever discuss {micro_target.name}.")
    # a plain template gets the instruction in front, its braces doubled so they stay literal
    plain = unlearn(micro[0], micro_target, "prompt_guardrail", prefix="{x} about {concept}: ")
    assert plain.prompt.render("Where?") == f"{{x}} about {micro_target.name}: Question: Where?\nAnswer:"


def test_in_context_demonstrations_are_chat_turns_under_chat(micro, micro_target):
    from unlearn_audit.attacks import get_attack
    from unlearn_audit.attacks.in_context import encode_conditions, plan

    s = _chat_subject(micro)
    params = get_attack("in_context").params({"shots": [0, 2], "draws": 1, "variants": ["heldout", "adversarial"]})
    conditions = plan(micro_target, params, s)
    data, slices = encode_conditions(s, conditions)
    two = next(i for i, c in enumerate(conditions) if c["variant"] == "heldout" and c["k"] == 2)
    (q1, a1), (q2, a2) = conditions[two]["turns"]
    item = conditions[two]["items"][0]
    messages = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                {"role": "user", "content": q2}, {"role": "assistant", "content": a2},
                {"role": "user", "content": item.question}]
    expected = _ids(s.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    row = slices[two].start
    labelled = (data["labels"][row] != IGNORE).nonzero().flatten().tolist()
    assert data["input_ids"][row][:labelled[0]].tolist() == expected
    adversarial = next(i for i, c in enumerate(conditions) if c["variant"] == "adversarial")
    first = data["input_ids"][slices[adversarial].start]
    assert s.tokenizer.decode(first).startswith("<|im_start|>user\n" + conditions[adversarial]["instruction"][:20])
