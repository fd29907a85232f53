"""Training-curve PNG written with every CLI run (loss and the algorithm's namespaced statistics)."""

from __future__ import annotations

from typing import Any


def plot_training_curves(log_history: list[dict[str, Any]], path: str) -> str | None:
    """One panel per logged quantity (loss, ``generator/...``, ``companion/...``, eval metrics) against the step."""
    import matplotlib

    matplotlib.use("Agg")  # headless: runs on servers and in CI
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)) or key.startswith("train_"):
                continue
            if key.endswith(("_runtime", "_per_second", "learning_rate")):
                continue
            series.setdefault(key, []).append((step, float(value)))
    if not series:
        return None
    names = sorted(series)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_sweep(rows: list[dict[str, Any]], x: str, y: str, path: str) -> str:
    """Quality-diversity curves: one line per model, one point per temperature (annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        points = [r for r in rows if r["model"] == model]
        ax.plot([r[x] for r in points], [r[y] for r in points], marker="o", label=model.rstrip("/").split("/")[-1])
        for r in points:
            ax.annotate(f"T={r['temperature']:g}", (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title("quality-diversity sweep over temperature")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
