"""The built-in world's and organism's commands: ``world show``, ``world export``, ``organism train``.

    unlearn-audit world show [--preset P] [--seed N] [--json]
    unlearn-audit world export DIR [--concept C]
    unlearn-audit organism train [--preset P] [--seed N] [--base MODEL] [--dp-epsilon E] [--sisa-shards S] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_output import (
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    PresetOpt,
    SeedOpt,
    ThreadsOpt,
    emit_json,
    table,
)

world_app = typer.Typer(help="The built-in synthetic world.", no_args_is_help=True)
organism_app = typer.Typer(help="The built-in model organism and its oracle.", no_args_is_help=True)


# ----------------------------------------------------------------------------- world

@world_app.command("show")
def world_show(preset: PresetOpt = "default", seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """List the concepts of the world with their sizes."""
    from .world import build_world, world_config

    w = build_world(world_config(preset, seed))
    rows = [[i, c.name, c.kind, len(c.entities), len(c.entities) * 7, ", ".join(c.cities)]
            for i, c in enumerate(w.concepts)]
    if as_json:
        emit_json({"seed": seed, "preset": preset, "concepts": [
            {"index": r[0], "name": r[1], "kind": r[2], "entities": r[3], "facts": r[4], "cities": list(w.concepts[r[0]].cities)}
            for r in rows]})
    else:
        table(f"world {preset} (seed {seed}): {len(w.facts())} facts", ["#", "concept", "kind", "entities", "facts", "cities"], rows)


@world_app.command("export")
def world_export(
    out: Annotated[Path, typer.Argument(help="Directory to write.")],
    concept: Annotated[str | None, typer.Option("--concept", help="Write this concept (name or index) as a target directory.")] = None,
    preset: PresetOpt = "default",
    seed: SeedOpt = 0,
) -> None:
    """Write the world as JSONL: the whole corpus, or with --concept a target directory."""
    from .data.target import save_target, world_target, write_jsonl
    from .files import prepare_output_dir, write_text_atomic
    from .world import build_world, world_config
    from .world.render import concept_documents, qa_pairs

    w = build_world(world_config(preset, seed))
    if concept is not None:
        name = w.resolve_concept(concept).name
        target = world_target(w, name)
        save_target(target, prepare_output_dir(out, "world", flag="export directory"))
        print(f"wrote target {name!r} to {out}", file=sys.stderr)
        return
    out = prepare_output_dir(out, "world", flag="export directory")
    import json as _json

    write_text_atomic(out / "corpus.jsonl", "".join(_json.dumps({"text": doc, "concept": c.name}) + "\n"
                                                    for c in w.concepts for doc in concept_documents(w, c.name)))
    write_text_atomic(out / "facts.jsonl", "".join(_json.dumps(fact.__dict__) + "\n" for fact in w.facts()))
    for phrasing in ("train", "eval"):
        write_jsonl(out / f"qa_{phrasing}.jsonl", [], [q for e in w.entities.values() for q in qa_pairs(e, phrasing)])
    write_text_atomic(out / "world.json", _json.dumps({"preset": preset, "seed": seed, "concepts": [
        {"name": c.name, "kind": c.kind, "cities": list(c.cities), "train_entities": list(c.train_entities),
         "heldout_entities": list(c.heldout_entities)} for c in w.concepts]}, indent=2) + "\n")
    print(f"wrote world ({len(w.facts())} facts) to {out}", file=sys.stderr)


# ----------------------------------------------------------------------------- organism

@organism_app.command("train")
def organism_train(
    preset: PresetOpt = "default",
    seed: SeedOpt = 0,
    concept: Annotated[str | None, typer.Option("--concept", help="Concept the oracle never sees (name or index; default: the first).")] = None,
    threads: ThreadsOpt = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Ignore the cache and train again.")] = False,
    base: Annotated[str | None, typer.Option(
        "--base", help="Fine-tune the world into this pretrained causal LM (directory or hub name) instead of "
                       "training the organism from scratch: a full model and an oracle, as TOFU builds its full and "
                       "retain models.")] = None,
    world: Annotated[str, typer.Option("--world", help="World preset fine-tuned into --base (micro, default, large).")] = "default",
    lora_r: Annotated[int, typer.Option("--lora-r", min=0, max=4096, help="With --base: train LoRA adapters of this "
                                        "rank (0: full fine-tuning; needs the peft extra).")] = 0,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="With --base: learning rate (default 1e-5, TOFU's; "
                                             "1e-4 with --lora-r).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="With --base: rows of packed text per step.")] = 16,
    seq_len: Annotated[int, typer.Option("--seq-len", min=8, help="With --base: tokens per packed row.")] = 256,
    max_epochs: Annotated[int, typer.Option("--max-epochs", min=1, help="With --base: epochs at most (training "
                                            "stops once every trained concept reaches --target-acc).")] = 20,
    target_acc: Annotated[float, typer.Option("--target-acc", min=0.0, max=1.0, help="With --base: QA accuracy "
                                              "every trained concept must reach.")] = 0.9,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="With --base: recompute "
                                                         "activations in the backward pass (less memory).")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    revision: Annotated[str | None, typer.Option("--revision", help="With --base: hub branch, tag or commit.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="With --base: allow the model's own code.")] = False,
    dp_epsilon: Annotated[float | None, typer.Option("--dp-epsilon", min=0.0, help="Train both models with DP-SGD "
                                                     "to this epsilon per document (inf: the DP pipeline without "
                                                     "noise or clipping; needs the dp extra). The organism is then "
                                                     "<preset>-dp<epsilon>.")] = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta", min=0.0, max=1.0, help="With --dp-epsilon: delta.")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option("--dp-max-grad-norm", min=0.0, help="With --dp-epsilon: the "
                                                    "per-example clipping norm C.")] = 1.0,
    sisa_shards: Annotated[int | None, typer.Option("--sisa-shards", min=1, max=64, help="Also train the SISA "
                                                    "ensemble of this many constituents, each on a disjoint shard of "
                                                    "the entities, and unlearn the removed concept from it (method "
                                                    "sisa).")] = None,
    sisa_slices: Annotated[int, typer.Option("--sisa-slices", min=1, max=64, help="With --sisa-shards: slices per "
                                             "shard, a checkpoint after each.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Train (or load from cache) the organism and its oracle; print per-concept accuracy.

    With --base, the built-in world is fine-tuned into a pretrained model instead (once with
    every concept, once without the removed one), cached by base, world and recipe. With
    --sisa-shards, the SISA ensemble too, before and after unlearning the removed concept."""
    from .errors import UserInputError
    from .organisms import BaseRecipe, based_organism, organism

    if sisa_shards is None and sisa_slices != 1:
        raise UserInputError("--sisa-slices needs --sisa-shards")
    if sisa_shards is not None and (base is not None or dp_epsilon is not None):
        raise UserInputError("--sisa-shards trains the from-scratch organism without DP; leave out "
                             + ("--base" if base is not None else "--dp-epsilon"))
    if sisa_shards is not None:  # shards and slices this world cannot fill fail before any training
        from .organisms import get_preset
        from .sisa import sisa_plan
        from .world import build_world, world_config

        sisa_plan(build_world(world_config(get_preset(preset).world, seed)), sisa_shards, sisa_slices, 0)
    if base is None:
        given = [f for f, v in (("--world", world != "default"), ("--lora-r", lora_r), ("--lr", lr is not None),
                                ("--revision", revision), ("--trust-remote-code", trust_remote_code)) if v]
        if given:
            raise UserInputError(f"{', '.join(given)} need --base (the organism's own recipe is its --preset)")
        if dp_epsilon is not None:
            from .organisms import dp_preset_name

            if dp_epsilon <= 0 or not 0 < dp_delta < 1:
                raise UserInputError("--dp-epsilon must be > 0 (inf: no noise) and --dp-delta in (0, 1)")

            preset = dp_preset_name(preset, dp_epsilon, dp_delta, dp_max_grad_norm)
        elif (dp_delta, dp_max_grad_norm) != (1e-5, 1.0):
            raise UserInputError("--dp-delta and --dp-max-grad-norm need --dp-epsilon")
        full, oracle = organism(preset, seed, concept, threads=threads, retrain=retrain)
        title = f"organism {preset} (seed {seed})"
    else:
        if preset != "default":
            raise UserInputError("--preset is the from-scratch organism's; with --base choose the world with --world")
        if dp_epsilon is not None:
            raise UserInputError("--dp-epsilon trains the from-scratch organism; leave out --base")
        from .world import world_config

        world_config(world)  # an unknown world preset fails here, before any model is loaded
        recipe = BaseRecipe(world=world, lr=lr if lr is not None else (1e-4 if lora_r else 1e-5),
                            batch_size=batch_size, seq_len=seq_len, max_epochs=max_epochs, target_acc=target_acc,
                            lora_r=lora_r, gradient_checkpointing=gradient_checkpointing)
        full, oracle = based_organism(base, seed, concept, recipe=recipe, device=device, dtype=dtype, revision=revision,
                                      trust_remote_code=trust_remote_code, threads=threads, retrain=retrain)
        title = f"{base} + world {world} (seed {seed}){', LoRA r ' + str(lora_r) if lora_r else ''}"
    f, o = full.info["organism"], oracle.info["organism"]
    doc = {"params": f["params"], "removed_concept": o["removed_concept"],
           "train_s": {"full": f["train_s"], "oracle": o["train_s"]},
           "epochs": {"full": f["epochs"], "oracle": o["epochs"]},
           "accuracy": {"full": f["accuracy"], "oracle": o["accuracy"]},
           "paths": {"full": full.path, "oracle": oracle.path}}
    if "dp" in f:
        doc["dp"] = {"full": f["dp"], "oracle": o["dp"]}
    if sisa_shards is not None:
        from .organisms import concept_accuracy, organism_world
        from .sisa import sisa

        ensemble = sisa(preset, seed, sisa_shards, sisa_slices, threads=threads)
        unlearned = sisa(preset, seed, sisa_shards, sisa_slices, o["removed_concept"], threads=threads)
        world = organism_world(full)
        info = unlearned.info["sisa"]
        doc["sisa"] = {"shards": sisa_shards, "slices": sisa_slices,
                       "accuracy": {"ensemble": concept_accuracy(ensemble, world),
                                    "unlearned": concept_accuracy(unlearned, world)},
                       **{k: info[k] for k in ("constituent_steps", "retrained", "retrain_steps", "retrain_fraction",
                                               "vs_oracle")}}
    if as_json:
        emit_json(doc)
        return
    rows = [[c + (" (removed)" if c == o["removed_concept"] else ""), f["accuracy"][c], o["accuracy"][c]]
            for c in f["accuracy"]]
    columns = ["concept", "full QA acc", "oracle QA acc"]
    if "sisa" in doc:
        columns += [f"SISA S={sisa_shards} acc", "SISA unlearned acc"]
        for row, c in zip(rows, f["accuracy"], strict=True):
            row += [doc["sisa"]["accuracy"]["ensemble"][c], doc["sisa"]["accuracy"]["unlearned"][c]]
    table(f"{title}, {f['params']:,} parameters", columns, rows)
    print(f"trained in {f['train_s']:.0f} s (full, {f['epochs']} epochs) and {o['train_s']:.0f} s "
          f"(oracle, {o['epochs']} epochs)", file=sys.stderr)
    for kind, dp in doc.get("dp", {}).items():
        group = dp["concept_group"]
        clip = "off" if dp["max_grad_norm"] is None else f"{dp['max_grad_norm']:g}"
        print(f"{kind}: DP-SGD epsilon {dp['epsilon']:.3g} per document (delta {dp['delta']:g}, sigma "
              f"{dp['noise_multiplier']:.3g}, C {clip}, {dp['steps']} steps at q {dp['sample_rate']:.3g}); "
              f"the removed concept's {group['documents']} documents together: epsilon {group['epsilon']:.3g}, "
              f"delta {group['delta']:.3g}", file=sys.stderr)
    if "sisa" in doc:
        d = doc["sisa"]
        print(f"SISA: {sisa_shards} constituents x {sisa_slices} slices, {sum(d['constituent_steps'])} steps in all "
              f"({', '.join(map(str, d['constituent_steps']))}); unlearning retrained {len(d['retrained'])} of them: "
              f"{d['retrain_steps']} steps = {d['retrain_fraction']:.2f} of all SISA training, "
              f"{d['vs_oracle']:.2f} of the monolithic oracle's", file=sys.stderr)
    print(f"full:   {doc['paths']['full']}\noracle: {doc['paths']['oracle']}", file=sys.stderr)
