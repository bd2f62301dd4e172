"""Figures from results (reads results only; matplotlib with the Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path


def relearn_figure(results: dict, path: Path, attacks: list[str] | None = None) -> Path | None:
    """One panel per relearning attack: accuracy on its evaluation set vs relearning step, for
    the original (black), the oracle (grey, dashed) and every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in (attacks or list(results.get("baselines", {})))
               if "steps" in results["baselines"].get(a, {}).get("original", {})]
    if not attacks:
        return None
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.6), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, attack in zip(axes[0], attacks, strict=True):
        base = results["baselines"][attack]
        steps = base["original"]["steps"]
        ax.plot(steps, base["original"]["acc"], color="black", lw=2, label="original")
        if "oracle" in base:
            ax.plot(steps, base["oracle"]["acc"], color="grey", lw=2, ls="--", label="oracle")
        for i, (name, m) in enumerate(results["methods"].items()):
            r = m["attacks"].get(attack)
            if r and "curve" in r and name != "none":
                ax.plot(r["curve"]["steps"], r["curve"]["acc"], color=cmap(i % 10), marker="o", ms=3, label=name)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("relearning step")
        sets = next((m["attacks"][attack]["eval_sets"] for m in results["methods"].values()
                     if attack in m["attacks"]), [])
        ax.set_title(f"{attack} (eval: {' + '.join(sets)})", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("QA accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"relearning '{results.get('concept', '')}'", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


KRS_STYLE = {"coefficients": ("tab:blue", "-"), "value_vectors": ("tab:grey", "-"),
             "attention": ("tab:orange", "-"), "coefficients+attention": ("tab:green", "-")}


def krs_figure(results: dict, path: Path) -> Path | None:
    """One panel per method with patching results: KRS by window centre for each intervention,
    and the content control (another entity's coefficients) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [(n, m["attacks"]["patching"]) for n, m in results.get("methods", {}).items()
               if "patching" in m.get("attacks", {}) and m["attacks"]["patching"].get("recovery") is not None]
    if not methods:
        return None
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes[0], methods, strict=True):
        for kind, series in p["krs"].items():
            color, ls = KRS_STYLE.get(kind, ("black", "-"))
            ax.plot(p["layers"], [float("nan") if v is None else v for v in series], color=color, ls=ls,
                    marker="o", ms=3, label=kind)
        control = p.get("content_control") or {}
        if control.get("coefficients"):
            ax.plot(p["layers"], [float("nan") if v is None else v for v in control["coefficients"]],
                    color="tab:blue", ls="--", lw=1, label="coefficients, other entity")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"window centre (window {p['window']})")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("KRS")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"restoring vanilla components into the unlearned model ('{results.get('concept', '')}')", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reemergence_figure(results: dict, path: Path, attack: str = "rtt") -> Path | None:
    """Concept neurons during relearning (attack ``attack``): the overlap of each model's top
    concept neurons with the original's, by step, then per model a layer x step heatmap of
    concept saliency (original and oracle first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = {n: m["attacks"][attack]["reemergence"] for n, m in results.get("methods", {}).items()
              if attack in m.get("attacks", {}) and "reemergence" in m["attacks"][attack]}
    if not blocks:
        return None
    first = next(iter(blocks.values()))
    steps = first["steps"]
    series = {k: first["saliency_by_layer"][k] for k in ("original", "oracle") if k in first["saliency_by_layer"]}
    overlap = {k: first["overlap_with_original"][k] for k in series}
    for name, b in blocks.items():
        series[name], overlap[name] = b["saliency_by_layer"][name], b["overlap_with_original"][name]
    n = len(series) + 1
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.5 * rows), squeeze=False)
    ax = axes[0][0]
    for name, values in overlap.items():
        style = {"original": ("black", "-"), "oracle": ("grey", "--")}.get(name, (None, "-"))
        ax.plot(range(len(steps)), values, color=style[0], ls=style[1], marker="o", ms=2, label=name)
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
    ax.set_title("top neurons ∩ original's (Jaccard)", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=5)
    vmax = max(max(max(row) for row in grid) for grid in series.values()) or 1.0
    for i, (name, grid) in enumerate(series.items(), start=1):
        ax = axes[i // cols][i % cols]
        ax.imshow(_layers_by_step(grid), aspect="auto", origin="lower", vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=6)
        ax.set_ylabel("layer", fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"concept saliency by layer during relearning ({attack})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _layers_by_step(grid: list[list[float]]) -> list[list[float]]:
    """(steps, layers) -> (layers, steps) for imshow."""
    return [list(col) for col in zip(*grid, strict=True)]
