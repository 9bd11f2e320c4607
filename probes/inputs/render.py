"""Token and span values drawn on their text: HTML for notebooks, PNG (matplotlib) for reports.

Both read a `Values` of an input game (its details carry the text and the spans' char offsets,
so a values file reloaded from JSON renders the same). Positive values are blue (the span raises
the target's log-probability), negative red; the strongest |value| sets full colour.
"""

from __future__ import annotations

import html
from os import PathLike

import numpy as np

from probes.errors import ProbeError


def span_details(prepared) -> dict:
    """What rendering needs, JSON-able, for Values.details of an input game."""
    return {"text": prepared.text, "prompt": prepared.prompt, "target": prepared.target_text,
            "spans": [[s.start, s.end] for s in prepared.spans]}


def _pieces(values):
    """(text, value or None) pieces covering the whole text in order."""
    details = values.details or {}
    if "text" not in details or "spans" not in details:
        raise ProbeError("these values carry no text and spans (details['text'], details['spans']); render the "
                         "values of an input game (probes.inputs.input_values or `surgery values tokens`)")
    text, spans = details["text"], details["spans"]
    if len(spans) != values.n_players:
        raise ProbeError(f"values have {values.n_players} players but {len(spans)} spans; the file was edited")
    pieces, cursor = [], 0
    for (start, end), value in sorted(zip(map(tuple, spans), values.means.tolist())):
        if start > cursor:
            pieces.append((text[cursor:start], None))
        pieces.append((text[start:end], value))
        cursor = end
    if cursor < len(text):
        pieces.append((text[cursor:], None))
    return pieces


def _rgba(value: float | None, scale: float) -> tuple[float, float, float, float]:
    if value is None or scale == 0:
        return (1.0, 1.0, 1.0, 0.0)
    alpha = min(1.0, abs(value) / scale)
    return (0.13, 0.4, 0.85, alpha) if value > 0 else (0.85, 0.2, 0.15, alpha)


def _scale(values) -> float:
    return float(np.max(np.abs(values.means))) if values.n_players else 0.0


def values_html(values, *, show_target: bool = True) -> str:
    """The text as HTML spans coloured by value; hovering a span shows its value."""
    scale = _scale(values)
    out = []
    for piece, value in _pieces(values):
        safe = html.escape(piece).replace("\n", "<br>")
        if value is None:
            out.append(f'<span style="color:#777">{safe}</span>')
        else:
            r, g, b, a = _rgba(value, scale)
            out.append(f'<span title="{value:+.4f}" style="background:rgba({int(r * 255)},{int(g * 255)},'
                       f'{int(b * 255)},{a:.2f});border-radius:3px">{safe}</span>')
    target = (values.details or {}).get("target")
    tail = (f' <span style="border:1px dashed #999;padding:0 2px">→ {html.escape(target)}</span>'
            if show_target and target else "")
    return f'<div style="font-family:monospace;line-height:1.8;white-space:pre-wrap">{"".join(out)}{tail}</div>'


class TokenValuesView:
    """Notebook display of token values (`_repr_html_`)."""

    def __init__(self, values):
        self.values = values

    def _repr_html_(self) -> str:
        return values_html(self.values)


def values_png(values, path: str | PathLike, *, width: int = 80, dpi: int = 150):
    """Save the coloured text as an image (monospace, wrapped at `width` characters); returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    scale = _scale(values)
    cells, row, col = [], 0, 0  # (row, col, char, value)
    for piece, value in _pieces(values):
        for char in piece:
            if char == "\n" or col >= width:
                row, col = row + 1, 0
                if char == "\n":
                    continue
            cells.append((row, col, char, value))
            col += 1
    rows = row + 1
    fig = plt.figure(figsize=(width * 0.11, rows * 0.28 + 0.3))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(rows + 0.2, -0.2)
    ax.axis("off")
    for r, c, char, value in cells:
        ax.add_patch(Rectangle((c, r), 1, 1, color=_rgba(value, scale), linewidth=0))
        ax.text(c + 0.5, r + 0.55, char, ha="center", va="center", family="monospace", fontsize=9,
                color="#777" if value is None else "black")
    fig.savefig(path, dpi=dpi)
    return fig
