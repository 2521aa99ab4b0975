"""Figures (matplotlib, Agg backend), never imported by the core. Each function saves one PNG and returns its path."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('figures need matplotlib: pip install ".[plots]" (or ".[lessons]")') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:  # measures every text: about half the cost of a many-panel figure
        fig.tight_layout()
    fig.savefig(path, dpi=int(os.environ.get("TINYLD_DPI", "110")))  # rendered lessons ask for more
    _plt().close(fig)
    return path


def heatmap(M: torch.Tensor, path, title: str = "", xticks: Sequence[str] | None = None,
            yticks: Sequence[str] | None = None, xlabel: str = "", ylabel: str = "", cmap: str = "viridis",
            annotate: bool = False, cbar_label: str = "") -> Path:
    """A matrix as colours. A diverging colour map (coolwarm, RdBu, bwr, seismic) is centred on 0."""
    plt = _plt()
    M = M.detach().double().cpu()
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * M.shape[1], 1.0 + 0.4 * M.shape[0]))
    norm = None
    if cmap in ("coolwarm", "RdBu", "bwr", "seismic") and M.min() < 0 < M.max():
        from matplotlib.colors import TwoSlopeNorm

        norm = TwoSlopeNorm(vcenter=0.0, vmin=M.min().item(), vmax=M.max().item())
    im = ax.imshow(M.numpy(), cmap=cmap, norm=norm)
    fig.colorbar(im, ax=ax, shrink=0.8, label=cbar_label)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=60, ha="right", fontsize=8)
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), yticks, fontsize=8)
    if annotate:
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def bars(groups: dict[str, torch.Tensor], labels: Sequence[str], path, title: str = "",
         ylabel: str | Sequence[str] = "", xlabel: str = "") -> Path:
    """Side-by-side bars: one panel per entry of ``groups``, each with the x tick ``labels``.

    ``ylabel`` is one label for every panel or a list with one label per panel (panels often differ in units)."""
    plt = _plt()
    ylabels = [ylabel] * len(groups) if isinstance(ylabel, str) else list(ylabel)
    if len(ylabels) != len(groups):
        raise ValueError(f"bars: {len(groups)} panels but {len(ylabels)} y labels: give one label or one per panel")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2))
    axes = axes if len(groups) > 1 else [axes]
    for ax, (name, v), yl in zip(axes, groups.items(), ylabels):
        ax.bar(range(len(v)), v.detach().double().cpu().numpy(), color="tab:blue")
        ax.set_xticks(range(len(labels)), labels)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=name, xlabel=xlabel, ylabel=yl)
    fig.suptitle(title)
    return _save(fig, path)


def scatter(pred: torch.Tensor, actual: torch.Tensor, path, title: str = "", xlabel: str = "predicted",
            ylabel: str = "actual") -> Path:
    """Predicted vs actual with the y = x line."""
    plt = _plt()
    p, a = pred.detach().double().cpu().flatten(), actual.detach().double().cpu().flatten()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(p.numpy(), a.numpy(), s=4, alpha=0.5)
    lo, hi = min(p.min(), a.min()).item(), max(p.max(), a.max()).item()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def lines(xs: Sequence[float], series: dict[str, Sequence[float]], path, title: str = "", xlabel: str = "",
          ylabel: str = "", logx: bool = False, logy: bool = False) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, (name, ys) in enumerate(series.items()):  # the first series solid, the others (references) dashed
        ax.plot(xs, ys, marker="o" if i == 0 else None, ms=3, ls="-" if i == 0 else "--", label=name)
    if logx:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def panels(x: Sequence[float], data: dict[str, dict[str, list[list[float]]]], path, title: str = "",
           xlabel: str = "", ylabel: str = "", ncols: int = 5) -> Path:
    """One panel per key of ``data`` (the paper's Fig. 3 layout). ``data[panel][split]`` holds, for each x, the
    values over seeds: the line is their mean, the band their min…max. Split ``train`` solid, ``test`` dashed."""
    plt = _plt()
    n = len(data)
    rows = -(-n // ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(3.0 * ncols, 2.3 * rows), squeeze=False)
    for ax, (name, splits) in zip(axes.flat, data.items()):
        for split, vals in splits.items():
            mean = [sum(v) / len(v) for v in vals]
            ls, color = ("-", "C0") if split == "train" else ("--", "C1")
            ax.plot(x, mean, ls=ls, color=color, label=split)
            ax.fill_between(x, [min(v) for v in vals], [max(v) for v in vals], color=color, alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.1 if rows > 1 else 0.2, top=0.9 if rows > 1 else 0.8,
                        wspace=0.3, hspace=0.55)  # fixed margins for the small panels: no tight_layout pass
    return _save(fig, path, tight=False)


def condition_lines(series: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path,
                    title: str = "", xlabel: str = "epoch", ylabel: str = "log π(y|x)") -> Path:
    """One panel per key of ``series``; in each, one line per condition: ``series[panel][condition] = (xs, ys)``."""
    plt = _plt()
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 2.8), squeeze=False)
    for ax, (name, conds) in zip(axes[0], series.items()):
        for i, (label, (xs, ys)) in enumerate(conds.items()):
            ax.plot(xs, ys, ls="-" if i == 0 else "--", label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def fit_panels(panels: dict[str, tuple[Sequence[float], Sequence[float], dict]], path, title: str = "",
               ylabel: str = "", groups: Sequence[str] | None = None) -> Path:
    """One scatter per panel with its least-squares line: ``panels`` maps an x label to (x, y, fit), fit with
    ``slope``, ``intercept`` and ``r2``; ``groups`` (one label per point) colours the points."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), sharey=True)
    axes = axes if len(panels) > 1 else [axes]
    for ax, (xlabel, (x, y, fit)) in zip(axes, panels.items()):
        labels = list(groups) if groups is not None else [""] * len(x)
        for g in dict.fromkeys(labels):
            sel = [i for i, lab in enumerate(labels) if lab == g]
            ax.scatter([x[i] for i in sel], [y[i] for i in sel], s=10, alpha=0.6, label=g or None)
        lo, hi = min(x), max(x)
        ax.plot([lo, hi], [fit["intercept"] + fit["slope"] * lo, fit["intercept"] + fit["slope"] * hi], "k-", lw=1)
        ax.set(title=f"R² = {fit['r2']:.2f}", xlabel=xlabel, ylabel=ylabel)
        if groups is not None:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
