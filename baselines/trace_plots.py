"""Figures of causal traces: one fact's heatmap (tokens × layers, as the reference draws them) and the average
indirect effect per layer at the summary positions, one panel per kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from baselines.tracing import FactTrace
from lte.core import files
from lte.core.errors import need

COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {"hidden": "the hidden state", "mlp": "MLP outputs", "attn": "attention outputs"}


def _pyplot():
    matplotlib = need("matplotlib", "lte trace's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(trace: FactTrace, path: Path, window: int) -> Path:
    """P*,restored[answer] per (token, layer); subject tokens are starred; colour from P*[answer] up."""
    plt = _pyplot()
    labels = [repr(trace.tokens[i])[1:-1] + ("*" if trace.subject_range[0] <= i < trace.subject_range[1] else "")
              for i in trace.positions]
    figure, axes = plt.subplots(figsize=(max(4.5, 2 + 0.18 * trace.scores.shape[1]), 1.2 + 0.28 * len(labels)), dpi=150)
    image = axes.pcolormesh(trace.scores, cmap=COLOURS[trace.kind], vmin=trace.corrupted)
    axes.invert_yaxis()
    axes.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize=7)
    axes.set_xticks(np.arange(0, trace.scores.shape[1], 5) + 0.5, range(0, trace.scores.shape[1], 5), fontsize=7)
    restored = "single restored layer" if trace.kind == "hidden" else f"centre of {window} restored layers"
    axes.set_xlabel(restored, fontsize=8)
    axes.set_title(f"Restoring {TITLES[trace.kind]} after corrupting the subject", fontsize=8)
    bar = figure.colorbar(image)
    bar.set_label(f"p({trace.answer.strip()})", fontsize=8)
    return _save(figure, plt, path)


def aie_plot(summary: dict, path: Path) -> Path:
    """AIE against layer, a line per summary position, a panel per kind traced."""
    plt = _pyplot()
    kinds = [kind for kind in ("hidden", "mlp", "attn") if kind in summary["kinds"]]
    figure, panels = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.2), dpi=150, squeeze=False)
    for axes, kind in zip(panels[0], kinds):
        table = summary["kinds"][kind]
        for position, row in zip(table["positions"], table["aie"]):
            axes.plot(range(len(row)), row, label=position)
        axes.set_title(f"AIE of {TITLES[kind]} ({table['facts']} facts)", fontsize=9)
        axes.set_xlabel("layer" if kind == "hidden" else f"centre of {summary['window']} layers", fontsize=8)
        axes.set_ylabel("average indirect effect", fontsize=8)
    panels[0][0].legend(fontsize=7)
    return _save(figure, plt, path)


def _save(figure, plt, path: Path) -> Path:
    figure.tight_layout()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return path
