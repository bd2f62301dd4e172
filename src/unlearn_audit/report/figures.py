"""Figures from results (reads results only; matplotlib with the Agg backend, no display).

Each figure has a ``*_plot(results) -> Figure | None`` (None: nothing to draw) and most a
``*_figure(results, path)`` that saves it; :func:`save` writes one figure in several formats
(PNG for the report, SVG for papers).
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text) -> str:
    """User text for a figure: matplotlib would read ``$...$`` as mathematics."""
    return str(text).replace("$", r"\$")


def save(fig, path: Path, formats: tuple[str, ...] = ("png",), dpi: int = 120) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``, close it, return the paths."""
    from ..files import atomic_path

    plt = _pyplot()
    paths = []
    try:
        for fmt in formats:
            p = Path(path).with_suffix(f".{fmt}")
            with atomic_path(p) as tmp:  # a full disk leaves the old figure, not half a new one
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
            paths.append(p)
    finally:
        plt.close(fig)
    return paths


def relearn_figure(results: dict, path: Path, attacks: list[str] | None = None) -> Path | None:
    """Save :func:`relearn_plot` as ``path``."""
    fig = relearn_plot(results, attacks)
    return save(fig, path, (Path(path).suffix.lstrip(".") or "png",))[0] if fig is not None else None


def relearn_plot(results: dict, attacks: list[str] | None = None):
    """One panel per relearning attack: accuracy on its evaluation set vs relearning step, for
    the original (black), the oracle (grey, dashed) and every method."""
    plt = _pyplot()

    attacks = [a for a in (attacks or list(results.get("baselines", {})))
               if "steps" in results["baselines"].get(a, {}).get("original", {})]
    if not attacks:
        return None
    # no layout engine: the legend sits right of the panels, and save() crops to what was drawn
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
                ax.plot(r["curve"]["steps"], r["curve"]["acc"], color=cmap(i % 10), marker="o", ms=3, label=plain(name))
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("relearning step")
        sets = next((m["attacks"][attack]["eval_sets"] for m in results["methods"].values()
                     if attack in m["attacks"]), [])
        ax.set_title(f"{attack} (eval: {' + '.join(sets)})", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("QA accuracy")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"relearning '{plain(results.get('concept', ''))}'", fontsize=11)
    fig.subplots_adjust(top=0.8, wspace=0.12)  # room for the title above the panels' own
    return fig


KRS_STYLE = {"coefficients": ("tab:blue", "-"), "value_vectors": ("tab:grey", "-"),
             "attention": ("tab:orange", "-"), "coefficients+attention": ("tab:green", "-")}


def krs_figure(results: dict, path: Path) -> Path | None:
    """One panel per method with patching results: KRS by window centre for each intervention,
    and the content control (another entity's coefficients) dashed."""
    plt = _pyplot()

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
        ax.set_title(plain(name), fontsize=10)
        ax.set_xlabel(f"window centre (window {p['window']})")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("KRS")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"restoring vanilla components into the unlearned model ('{plain(results.get('concept', ''))}')",
                 fontsize=11)
    fig.tight_layout()
    return save(fig, path, (Path(path).suffix.lstrip(".") or "png",))[0]


def tradeoff_plot(results: dict):
    """Forget vs unrelated QA accuracy, one point per method setting (Hong et al.'s trade-off
    scatter): the ideal is the oracle's corner, low forget and high unrelated accuracy. Points
    of one method share a colour; original and oracle are marked."""
    plt = _pyplot()

    methods = {n: m for n, m in results.get("methods", {}).items()
               if m.get("forget_acc") is not None and m.get("unrelated_acc") is not None}
    if not methods:
        return None
    settings = results.get("settings", {})
    families = list(dict.fromkeys(settings.get(n, {}).get("method", n.split("[")[0]) for n in methods))
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for ref, style in (("original", dict(color="black", marker="*", s=140)),
                       ("oracle", dict(color="grey", marker="*", s=140))):
        r = results.get(ref)
        if r and r.get("forget_acc") is not None and r.get("unrelated_acc") is not None:
            ax.scatter(r["unrelated_acc"], r["forget_acc"], label=ref, zorder=3, **style)
    for i, family in enumerate(families):
        names = [n for n in methods if settings.get(n, {}).get("method", n.split("[")[0]) == family]
        xs = [methods[n]["unrelated_acc"] for n in names]
        ys = [methods[n]["forget_acc"] for n in names]
        ax.scatter(xs, ys, color=cmap(i % 10), label=plain(family), s=36, alpha=0.85, zorder=2)
        if len(names) <= 12:
            for n, x, y in zip(names, xs, ys, strict=True):
                short = n[len(family):].strip("[]") or family
                ax.annotate(plain(short), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("unrelated QA accuracy (keep high)")
    ax.set_ylabel("forget QA accuracy (drive low)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"forget vs unrelated: '{plain(results.get('concept', ''))}'", fontsize=10)
    fig.tight_layout()
    return fig


def krs_heatmap_plot(results: dict):
    """KRS per method setting (rows) and window centre (columns), one panel per intervention:
    where in the network restoring the vanilla computation brings the concept back."""
    plt = _pyplot()
    import numpy as np

    rows = [(n, m["attacks"]["patching"]) for n, m in results.get("methods", {}).items()
            if m.get("attacks", {}).get("patching", {}).get("krs")]
    if not rows:
        return None
    kinds = [k for k in rows[0][1]["krs"] if any(p["krs"].get(k) for _, p in rows)]
    layers = rows[0][1]["layers"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.5 + len(kinds) * (1.2 + 0.35 * len(layers)), 1.4 + 0.3 * len(rows)),
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        grid = np.array([[np.nan if v is None else v for v in (p["krs"].get(kind) or [None] * len(layers))]
                         for _, p in rows], dtype=float)
        im = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(rows)), [plain(n) for n, _ in rows] if ax is axes[0][0] else [""] * len(rows),
                      fontsize=7)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("window centre", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9, label="KRS")
    # long setting names on the y axis: no layout engine (it would collapse the panels);
    # the title sits above the panels and save() crops to what was drawn
    fig.suptitle(f"knowledge recovery by restoring vanilla components ('{plain(results.get('concept', ''))}')",
                 fontsize=10, y=1.0 + 0.25 / fig.get_figheight())
    return fig


def reemergence_figure(results: dict, path: Path, attack: str = "rtt") -> Path | None:
    """Save :func:`reemergence_plot` as ``path``."""
    fig = reemergence_plot(results, attack)
    return save(fig, path, (Path(path).suffix.lstrip(".") or "png",))[0] if fig is not None else None


def reemergence_plot(results: dict, attack: str = "rtt"):
    """Concept neurons during relearning (attack ``attack``): the overlap of each model's top
    concept neurons with the original's, by step, then per model a layer x step heatmap of
    concept saliency (original and oracle first)."""
    plt = _pyplot()

    blocks = {n: m["attacks"][attack]["reemergence"] for n, m in results.get("methods", {}).items()
              if attack in m.get("attacks", {}) and "reemergence" in m["attacks"][attack]
              and "not_applicable" not in m["attacks"][attack]["reemergence"]}  # an ensemble's
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
        ax.plot(range(len(steps)), values, color=style[0], ls=style[1], marker="o", ms=2, label=plain(name))
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
    ax.set_title("top neurons ∩ original's (Jaccard)", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=5)
    # one colour scale, set by the references (original, oracle): a method far outside it
    # (ECO corrupts the embeddings of concept inputs) saturates instead of washing out the rest
    refs = [series[k] for k in ("original", "oracle") if k in series] or list(series.values())
    vmax = max(max(max(row) for row in grid) for grid in refs) or 1.0
    for i, (name, grid) in enumerate(series.items(), start=1):
        ax = axes[i // cols][i % cols]
        ax.imshow(_layers_by_step(grid), aspect="auto", origin="lower", vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(plain(name), fontsize=8)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=6)
        ax.set_ylabel("layer", fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"concept saliency by layer during relearning ({attack})", fontsize=10)
    fig.tight_layout()
    return fig


def _layers_by_step(grid: list[list[float]]) -> list[list[float]]:
    """(steps, layers) -> (layers, steps) for imshow."""
    return [list(col) for col in zip(*grid, strict=True)]
