"""The ``unlearn-audit`` command: a thin layer over the Python API.

Tables go to stdout; ``--json`` prints one JSON document to stdout and nothing else there;
progress and logs go to stderr. Errors print one ``error: ...`` line; exit code 2 for bad
input, 1 for a failure while running. Heavy imports (torch, transformers) happen inside the
commands so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_experiments import register as register_experiment_commands
from .cli_output import (
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    PresetOpt,
    SeedOpt,
    ThreadsOpt,
    emit_json,
    print_reemergence,
    table,
)
from .cli_world import organism_app, world_app

app = typer.Typer(
    name="unlearn-audit",
    help="Audit whether an unlearned language model has really lost a concept or only hides it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(world_app, name="world")
app.add_typer(organism_app, name="organism")

_state = {"debug": False}
INTERRUPTED = "error: interrupted; run again to resume (finished work is kept)"


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


# ----------------------------------------------------------------------------- evaluate

@app.command("evaluate")
def evaluate_cmd(
    subject: Annotated[str, typer.Option("--subject", help="Model directory, hub name, or organism:<preset>.")],
    target: Annotated[str, typer.Option("--target", help="world:<concept>[@<seed>] or a target directory.")],
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own code.")] = False,
    revision: RevisionOpt = None,
    prompt_template: PromptOpt = None,
    system_prompt: SystemOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """QA accuracy and answer NLL of a subject on every set of a target."""
    from .api import target_for
    from .metrics.behaviour import evaluate
    from .organisms import load_subject

    s = load_subject(subject, device=device, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
                     prompt_template=prompt_template, system_prompt=system_prompt)
    t = target_for(target, s)
    result = evaluate(s, t)
    if as_json:
        emit_json({"subject": s.name, "target": t.name, **result})
        return
    table(f"{s.name} on {t.name}", ["set", "accuracy", "answer NLL", "items"],
           [[k, v["acc"], v["nll"], v["n"]] for k, v in result["sets"].items()])


ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="k=v (repeatable), e.g. --param lr=1e-4 --param steps=20.")]
AttackParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", help="k=v for every attack that has k, or attack.k=v for one (repeatable), "
                    "e.g. --param rtt.checkpoints=[0,5,50] --param seed=1.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's own Python code (runs arbitrary code).")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit of --subject "
                                                 "(e.g. Pythia's step143000).")]
PromptOpt = Annotated[str | None, typer.Option(
    "--prompt-template", help="How questions are asked: chat (the tokenizer's chat template; the default when it has "
                              "one) or a format string with {question} (default 'Question: {question}\nAnswer:').")]
SystemOpt = Annotated[str | None, typer.Option("--system-prompt", help="A system turn before every question.")]


def parse_params(items: list[str] | None) -> dict:
    """``["lr=1e-4", "steps=[0,5]", "max_grad_norm=none"]`` -> dict; values parsed as JSON when
    they are JSON, ``none``/``null`` -> None, else kept as strings (pydantic coerces them)."""
    from .errors import UserInputError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--param {item!r} is not k=v; write e.g. --param lr=1e-4")
        v = value.strip()
        if v.lower() in ("none", "null"):
            out[key.strip()] = None
            continue
        try:
            out[key.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[key.strip()] = v
    return out


@app.command("unlearn")
def unlearn_cmd(
    subject: Annotated[str, typer.Option("--subject", help="Model directory, hub name, or organism:<preset>.")],
    target: Annotated[str, typer.Option("--target", help="world:<concept>[@<seed>] or a target directory.")],
    method: Annotated[str, typer.Option("--method", help="Unlearning method (see `unlearn-audit methods`).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to save the unlearned model to.")],
    param: ParamOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None,
    prompt_template: PromptOpt = None,
    system_prompt: SystemOpt = None,
    merge: Annotated[bool, typer.Option("--merge", help="With lora_r > 0: save a whole model with the adapters "
                                        "merged in (default: the adapters only, which load onto the subject).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Unlearn a target from a subject with one method and save the result."""
    from .api import target_for, unlearn
    from .files import prepare_output_dir
    from .methods import get_method
    from .metrics.behaviour import evaluate
    from .metrics.qa import EvalSuite
    from .organisms import load_subject

    m = get_method(method)
    params = m.params(parse_params(param))  # validate before loading anything heavy
    if (accum := getattr(params, "grad_accum_steps", None)) is not None:  # before any model is loaded
        from .distributed import check_shared_steps

        check_shared_steps(accum)
    prepare_output_dir(out, "model", create=False)  # refuse a user's directory before any work
    s = load_subject(subject, device=device, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
                     prompt_template=prompt_template, system_prompt=system_prompt)
    t = target_for(target, s)
    suite = EvalSuite(s, t.eval_sets())  # encoded once for both evaluations
    before = evaluate(s, t, suite)
    u = unlearn(s, t, method, params)  # validated once, above
    u.save(out, merge=merge)
    after = evaluate(u, t, suite)
    doc = {"subject": s.name, "target": t.name, "method": method, "params": params.model_dump(),
           "out": str(out), "before": before, "after": after}
    if as_json:
        emit_json(doc)
        return
    table(f"{method} on {s.name}: '{t.name}'", ["set", "before", "after"],
           [[k, before["sets"][k]["acc"], after["sets"].get(k, {}).get("acc")] for k in before["sets"]])
    print(f"saved to {out}", file=sys.stderr)


@app.command("audit")
def audit_cmd(
    name: Annotated[str, typer.Argument(help="Attack name(s), comma separated, or all (see `unlearn-audit attacks`).")],
    original: Annotated[str, typer.Option("--original", help="The model before unlearning.")],
    unlearned: Annotated[str, typer.Option("--unlearned", help="The unlearned model.")],
    target: Annotated[str, typer.Option("--target", help="world:<concept>[@<seed>] or a target directory.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write results.json and figures to.")],
    oracle: Annotated[str | None, typer.Option("--oracle", help="A model that never saw the concept (enables residual knowledge).")] = None,
    param: AttackParamOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    prompt_template: PromptOpt = None,
    system_prompt: SystemOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Attack an unlearned model and measure recovery (and residual knowledge with --oracle)."""
    from .api import audit, target_for
    from .attacks import attack_fields, attack_names, get_attack
    from .experiment.demo import parse_list
    from .experiment.rundir import write_results
    from .files import prepare_output_dir
    from .organisms import load_subject
    from .params import scope_params
    from .report.outputs import write_outputs
    from .report.tables import summary_rows
    from .results.schema import run_document

    attacks = parse_list(name, (), attack_names(), "attack")
    overrides = scope_params(parse_params(param), attacks, attack_fields)
    for a in attacks:
        get_attack(a).params(overrides[a])  # validate before loading models
    prepare_output_dir(out, "run", create=False)  # refuse a user's directory before any work
    kw = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code, prompt_template=prompt_template,
              system_prompt=system_prompt)
    orig = load_subject(original, **kw)
    unl = load_subject(unlearned, **kw)
    orc = load_subject(oracle, **kw) if oracle else None
    t = target_for(target, orig)
    method = unl.info.get("method", {}).get("name", "unlearned")
    doc = audit(orig, {method: unl}, t, attacks, orc, overrides)
    results = run_document([doc])
    run_dir = prepare_output_dir(out, "run")
    write_results(run_dir, results)
    write_outputs(run_dir, results, report=False)
    if as_json:
        emit_json({**results, "run_dir": str(out)})
        return
    cols, rows = summary_rows(doc, attacks)
    table(f"{', '.join(attacks)} on {unl.name}: '{t.name}'", cols, rows)
    print_reemergence(doc)
    print(f"run directory: {run_dir}", file=sys.stderr)


@app.command("benchmark")
def benchmark_cmd(
    subject: Annotated[str, typer.Option("--subject", help="Model directory, hub name, or organism:<preset>.")],
    target: Annotated[str, typer.Option("--target", help="tofu:<split>, wmdp:<domain> or muse:<corpus>, optionally @DIR (a local copy); world:<concept> is scored as TOFU.")],
    oracle: Annotated[str | None, typer.Option("--oracle", help="The retain/retrained model: enables TOFU forget quality and MUSE PrivLeak.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens generated per TOFU answer (ROUGE-L).")] = 200,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    prompt_template: PromptOpt = None,
    system_prompt: SystemOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A benchmark's own metrics (TOFU, WMDP, MUSE; the world as TOFU) for a subject, against an oracle if given."""
    from .api import target_for
    from .metrics.benchmark import benchmark_scores, headline
    from .organisms import load_subject

    kw = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code, prompt_template=prompt_template,
              system_prompt=system_prompt)
    t = target_for(target) if not target.startswith("world:") else None  # a benchmark: check it before loading models
    if t is not None and t.benchmark is None:
        from .errors import UserInputError
        raise UserInputError(f"--target {target!r} is not a benchmark; write tofu:<split>, wmdp:<domain>, "
                             "muse:<corpus> or world:<concept> (scored as TOFU)")
    s = load_subject(subject, **kw)
    t = t or target_for(target, s)  # world:<concept> resolves in the organism's own world
    ref = None
    doc: dict = {"target": t.name}
    if oracle is not None:
        o = load_subject(oracle, **kw)
        ref = benchmark_scores(o, t, max_new_tokens=max_new_tokens)
        doc["oracle"] = {"subject": o.name, **ref}
    doc["subject"] = s.name
    doc["scores"] = benchmark_scores(s, t, reference=ref, max_new_tokens=max_new_tokens)
    if as_json:
        emit_json(doc)
        return
    rows = [[k, v, headline(ref).get(k) if ref else None] for k, v in headline(doc["scores"]).items()]
    table(f"{s.name} on {t.name}", ["metric", s.name, "oracle"], rows)


@app.command("methods")
def methods_cmd(as_json: JsonOpt = False) -> None:
    """List unlearning methods and their parameters with defaults."""
    from .methods import get_method, method_names

    rows = []
    for n in method_names():
        m = get_method(n)
        fields = {k: f.default for k, f in m.Params.model_fields.items()}
        rows.append({"name": n, "kind": m.kind, "params": fields, "doc": (type(m).__doc__ or "").strip().splitlines()[0] if type(m).__doc__ else ""})
    if as_json:
        emit_json(rows)
        return
    table("unlearning methods", ["method", "kind", "parameters (defaults)"],
           [[r["name"], r["kind"], ", ".join(f"{k}={v}" for k, v in r["params"].items())] for r in rows])


@app.command("attacks")
def attacks_cmd(as_json: JsonOpt = False) -> None:
    """List attacks and their parameters with defaults."""
    from .attacks import attack_names, get_attack

    rows = [{"name": n, "summary": get_attack(n).summary,
             "params": {k: f.default for k, f in get_attack(n).Params.model_fields.items()}} for n in attack_names()]
    if as_json:
        emit_json(rows)
        return
    table("attacks", ["attack", "what it does", "parameters (defaults)"],
           [[r["name"], r["summary"], ", ".join(f"{k}={v}" for k, v in r["params"].items())] for r in rows])


@app.command("demo")
def demo_cmd(
    methods: Annotated[str | None, typer.Option("--methods", help="Comma list of methods, or all.")] = None,
    attacks: Annotated[str | None, typer.Option("--attacks", help="Comma list of attacks, or all.")] = None,
    preset: PresetOpt = "default",
    seed: SeedOpt = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/demo-<preset>-s<seed>).")] = None,
    runs: Annotated[int, typer.Option("--runs", "--seeds", help="Relearning runs per model (curves averaged; tighter "
                                      "intervals); --seeds is its old name.")] = 1,
    fresh: Annotated[bool, typer.Option("--fresh", help="Recompute every cell instead of reusing finished ones.")] = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget one concept of the organism with one method of each family (--methods all: all) and attack each."""
    from .api import DEFAULT_ATTACKS
    from .attacks import attack_names
    from .experiment.demo import DEMO_METHODS, parse_list, run_demo
    from .methods import method_names
    from .report.outputs import write_outputs
    from .report.tables import summary_rows

    method_list = parse_list(methods, DEMO_METHODS, method_names(), "method")
    attack_list = parse_list(attacks, DEFAULT_ATTACKS, attack_names(), "attack")
    if runs < 1:
        from .errors import UserInputError
        raise UserInputError(f"--runs must be >= 1, not {runs}")
    run = run_demo(preset, seed, method_list, attack_list, out, threads, runs, fresh)
    results, paths = run.results, run.paths
    paths.update(write_outputs(paths["results"].parent, results))
    if as_json:
        emit_json({**results, "run_dir": str(paths["results"].parent)})
    else:
        doc = results["targets"][0]
        cols, rows = summary_rows(doc, attack_list)
        table(f"unlearning '{doc['concept']}' on organism:{preset}@{seed}", cols, rows)
        print_reemergence(doc)
        print(f"residual knowledge: 0 = as good as the oracle, 1 = nothing removed; computing it took "
              f"{results['timings_s']['total']:.0f} s", file=sys.stderr)
        print(f"run directory: {paths['results'].parent}", file=sys.stderr)
    print(f"report: {paths['report']}", file=sys.stderr)
    run.raise_if_failed()


register_experiment_commands(app)


@functools.cache
def _command():
    """The click command built from ``app`` (building it reads every signature: build it once)."""
    return typer.main.get_command(app)


# what runs as several processes under torchrun / accelerate launch (training split across
# them, evaluation data-parallel, the first process writing); the rest runs in one
GROUP_COMMANDS = ("unlearn", "evaluate")


def _in_group(argv: list[str]) -> bool:
    """Under a launcher: join its process group, and let only the first process print.
    A command that cannot run in a group is refused (UserInputError)."""
    from .distributed import launched

    if not launched():
        return False
    from .errors import UserInputError

    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in GROUP_COMMANDS:
        raise UserInputError(f"{name or 'this command'} runs in one process; under torchrun or accelerate launch "
                             f"run one of: {', '.join(GROUP_COMMANDS)}")
    from .distributed import data_parallel, join_group

    join_group()
    if data_parallel()[0] != 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning our errors into one ``error:`` line and an exit code."""
    from .errors import UnlearnAuditError

    command = _command()
    grouped = False
    try:
        grouped = _in_group(sys.argv[1:] if argv is None else argv)
        rv = command.main(args=argv, prog_name="unlearn-audit", standalone_mode=False)
        if rv == 130:  # typer turned a KeyboardInterrupt into this exit code before we could see it
            print(INTERRUPTED, file=sys.stderr)
        return rv if isinstance(rv, int) else 0
    except UnlearnAuditError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        if e.exit_code == 130:  # typer's own translation of KeyboardInterrupt
            print(INTERRUPTED, file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a file removed under us: a failure while running
        if _state["debug"]:
            raise
        from .files import describe_os_error

        where = f": {e.filename}" if e.filename else ""
        print(f"error: {describe_os_error(e)}{where}; finished work is kept, fix it and run again to resume",
              file=sys.stderr)
        return 1
    except Exception as e:
        # click's usage errors (typer vendors click, so match by shape, not by class)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            if type(e).__name__ == "NoArgsIsHelpError":
                print(e.format_message(), file=sys.stderr)
                return 0
            print(f"error: {e.format_message()}", file=sys.stderr)
            return 2
        raise
    finally:
        if grouped:
            from .distributed import leave_group

            leave_group()


def _console_main() -> None:
    import gc

    # A command imports torch and transformers: about a million objects that live until exit.
    # With CPython's default thresholds the collector re-scans them while they load and once
    # more at exit; without that a 20-step `unlearn` takes 3.0 s, not 4.3 s (BENCHMARKS.md).
    # Full collections stay on, only rarer; freezing before exit skips the final scan.
    gc.set_threshold(700, 10, 1000)
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    _console_main()
