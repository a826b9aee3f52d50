"""The card's charts, drawn from the bundle as PNG files inside the dataset folder: what each task contributes,
how long the histories are, and how each persona's Big Five trajectory moves over its turns."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from persona_factory.publish.bundle import PublishBundle  # noqa: E402
from persona_factory.schema import BIG_FIVE_TRAITS  # noqa: E402

FIGURES_DIR = "figures"
MAX_TRAJECTORIES = 40  # lines per trait panel; beyond this the mean tells more than the lines
# no Software/Creation-time metadata: an unchanged bundle gives byte-identical files
_PNG_METADATA = {"Software": None}


def write_charts(bundle: PublishBundle, root: Path) -> dict[str, str]:
    """Write every chart under `root/figures/`; return {title: path relative to root}."""
    (root / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    charts = {
        "Task distribution": ("task_distribution.png", _task_distribution),
        "History length distribution": ("history_lengths.png", _history_lengths),
        "Big Five trajectories": ("big_five_trajectories.png", _big_five),
    }
    out = {}
    for title, (name, draw) in charts.items():
        fig = draw(bundle)
        rel = f"{FIGURES_DIR}/{name}"
        fig.savefig(root / rel, dpi=100, metadata=_PNG_METADATA)
        plt.close(fig)
        out[title] = rel
    return out


def _bars(ax, counts: Counter[str], title: str) -> None:
    labels = sorted(counts)
    ax.barh(labels, [counts[k] for k in labels], color="#4C72B0")
    ax.set_title(title)
    ax.set_xlabel("rows")
    if not labels:
        ax.text(0.5, 0.5, "none in this release", ha="center", va="center", transform=ax.transAxes)


def _task_distribution(bundle: PublishBundle):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    _bars(axes[0], Counter(r.task for r in bundle.sft), "SFT records per task")
    _bars(axes[1], Counter(r.kind for r in bundle.rl), "RL records per kind")
    _bars(axes[2], Counter(i.question_type for i in bundle.benchmark), "Benchmark items per question type")
    return fig


def _history_lengths(bundle: PublishBundle):
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    by_split: dict[str, list[int]] = defaultdict(list)
    for d in bundle.dialogues:
        by_split[d.split].append(len(d.turns))
    for split in sorted(by_split):
        ax.hist(by_split[split], bins=20, alpha=0.6, label=f"{split} ({len(by_split[split])} histories)")
    ax.set_xlabel("turns per history")
    ax.set_ylabel("histories")
    ax.set_title("History length by split")
    if by_split:
        ax.legend()
    return fig


def _big_five(bundle: PublishBundle):
    """One panel per trait: each persona's EMA trajectory over its turns, and the mean over personas."""
    fig, axes = plt.subplots(1, len(BIG_FIVE_TRAITS), figsize=(18, 3.8), sharey=True, layout="constrained")
    series: dict[str, list[tuple[int, dict[str, float]]]] = defaultdict(list)
    for s in bundle.personality_steps:
        series[s.persona_id].append((s.turn_index, s.ema))
    shown = sorted(series)[:MAX_TRAJECTORIES]
    for ax, trait in zip(axes, BIG_FIVE_TRAITS):
        means: dict[int, list[float]] = defaultdict(list)
        for pid in sorted(series):
            points = sorted(series[pid])
            for turn, ema in points:
                means[turn].append(ema[trait])
            if pid in shown:
                ax.plot([t for t, _ in points], [e[trait] for _, e in points], lw=0.8, alpha=0.4, color="#4C72B0")
        if means:
            turns = sorted(means)
            ax.plot(turns, [sum(means[t]) / len(means[t]) for t in turns], lw=2, color="#C44E52", label="mean")
        else:
            ax.text(0.5, 0.5, "no trajectories", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(trait)
        ax.set_xlabel("turn")
        ax.set_ylim(1, 5)
    axes[0].set_ylabel("EMA score (1-5)")
    return fig
