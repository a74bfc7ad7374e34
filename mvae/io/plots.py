"""The two figures ``mvae fit`` writes: the loss curve and the embedding scatter.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas (``Figure`` +
``FigureCanvasAgg``): no pyplot, so no global figure state, no GUI backend and nothing that depends
on ``MPLBACKEND`` or a display. matplotlib is imported inside the functions, so importing this
module costs nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["plot_loss", "plot_embedding", "MAX_LEGEND_CATEGORIES"]

#: Categories shown in the legend; rarer ones are drawn grey as "other".
MAX_LEGEND_CATEGORIES = 20
_MISSING_COLOUR = "#b0b0b0"


def _figure(width: float, height: float, *, right: float = 0.97):
    """A figure on an Agg canvas with fixed margins (a layout engine doubles the drawing time)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.9 / width, bottom=0.6 / height, right=right,
                        top=1 - 0.4 / height)
    return fig


def plot_loss(history: "pd.DataFrame", path: str | os.PathLike, *, best_epoch=None) -> None:
    """Train and validation loss per epoch, as a PNG.

    Parameters
    ----------
    history : pandas.DataFrame
        ``MultinomialVAE.history_``: columns ``epoch``, ``train_loss`` and (possibly all NaN)
        ``validation_loss``, in nats per sample.
    path : str or os.PathLike
        Where to write the PNG.
    best_epoch : int, optional
        Marked with a dotted vertical line (the weights kept by early stopping).
    """
    import numpy as np

    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    epoch = history["epoch"].to_numpy()
    marker = "o" if len(epoch) <= 30 else None
    ax.plot(epoch, history["train_loss"].to_numpy(), marker=marker, ms=3, label="train")
    valid = history["validation_loss"].to_numpy(dtype=float)
    if np.isfinite(valid).any():
        ax.plot(epoch, valid, marker=marker, ms=3, label="validation")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="0.4", ls=":", lw=1, label=f"best epoch ({best_epoch})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per sample (nats)")
    ax.set_title("mvae fit: loss")
    ax.legend(frameon=False)
    fig.savefig(path, format="png")


def plot_embedding(
    embeddings: "pd.DataFrame",
    path: str | os.PathLike,
    *,
    colour: "pd.Series | None" = None,
    kind: str | None = None,
    proportion_explained: Sequence[float] | None = None,
) -> None:
    """The first two embedding axes as a scatter plot, optionally coloured by a metadata column.

    Parameters
    ----------
    embeddings : pandas.DataFrame, shape (n_samples, k)
        Samples x axes. With k = 1 the single axis is plotted against the sample's rank on it.
    path : str or os.PathLike
        Where to write the PNG.
    colour : pandas.Series, optional
        One value per sample (aligned to ``embeddings.index``). Numeric values get a colour bar,
        categorical ones a legend (the ``MAX_LEGEND_CATEGORIES`` most frequent; the rest grey as
        "other"). Missing values are drawn grey.
    kind : {"numeric", "categorical"}, optional
        How to treat ``colour``; default from its dtype.
    proportion_explained : sequence of float, optional
        Shown in the axis labels, as a percentage.
    """
    import numpy as np

    categorical = colour is not None and (kind or ("numeric" if colour.dtype.kind in "fiu"
                                                   else "categorical")) == "categorical"
    fig = _figure(8.5, 5.0, right=0.68) if categorical else _figure(6.5, 5.0)  # legend room
    ax = fig.add_subplot()
    values = embeddings.to_numpy(dtype=float)
    x = values[:, 0]
    if values.shape[1] >= 2:
        y = values[:, 1]
        ylabel = _axis_label(embeddings.columns[1], proportion_explained, 1)
    else:
        y = np.argsort(np.argsort(x)).astype(float)
        ylabel = f"rank on {embeddings.columns[0]}"
    xlabel = _axis_label(embeddings.columns[0], proportion_explained, 0)

    if colour is None:
        ax.scatter(x, y, s=18, alpha=0.8, edgecolors="none")
    else:
        colour = colour.reindex(embeddings.index)
        if kind is None:
            kind = "numeric" if colour.dtype.kind in "fiu" else "categorical"
        if kind == "numeric":
            c = colour.to_numpy(dtype=float)
            ok = np.isfinite(c)
            if (~ok).any():
                ax.scatter(x[~ok], y[~ok], s=18, c=_MISSING_COLOUR, edgecolors="none",
                           label="missing")
                ax.legend(frameon=False, loc="best")
            points = ax.scatter(x[ok], y[ok], c=c[ok], s=18, cmap="viridis", edgecolors="none")
            fig.colorbar(points, ax=ax, label=str(colour.name))
        else:
            _categorical_scatter(fig, ax, x, y, colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("mvae embedding" + (f" coloured by {colour.name}" if colour is not None else ""))
    fig.savefig(path, format="png")


def _axis_label(name, proportion_explained, i: int) -> str:
    if proportion_explained is None or i >= len(proportion_explained):
        return str(name)
    return f"{name} ({100 * float(proportion_explained[i]):.1f}% of clr variance)"


def _categorical_scatter(fig, ax, x, y, colour) -> None:
    import numpy as np

    labels = colour.astype(object).where(colour.notna(), None).to_numpy()
    present = [v for v in labels if v is not None]
    counts: dict = {}
    for v in present:
        counts[str(v)] = counts.get(str(v), 0) + 1
    shown = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_LEGEND_CATEGORIES]
    palette = _palette(len(shown))
    text = np.array(["" if v is None else str(v) for v in labels], dtype=object)
    for cat, col in zip(shown, palette):
        m = text == cat
        ax.scatter(x[m], y[m], s=18, color=col, edgecolors="none", label=f"{cat} ({m.sum()})")
    rest = np.array([t not in shown and t != "" for t in text])
    if rest.any():
        ax.scatter(x[rest], y[rest], s=18, color="0.55", edgecolors="none",
                   label=f"other ({rest.sum()})")
    missing = text == ""
    if missing.any():
        ax.scatter(x[missing], y[missing], s=18, color=_MISSING_COLOUR, edgecolors="none",
                   label=f"missing ({missing.sum()})")
    ax.legend(title=str(colour.name), loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False, fontsize="small", borderaxespad=0.0)


def _palette(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
