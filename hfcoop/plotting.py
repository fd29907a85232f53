"""Training-curve PNG written with every CLI run (loss and the algorithm's namespaced statistics)."""

from __future__ import annotations

from typing import Any


def plot_training_curves(log_history: list[dict[str, Any]], path: str) -> str | None:
    """One panel per logged quantity (loss, ``cot/...``, ``mediator/...``, eval metrics) against the step."""
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
