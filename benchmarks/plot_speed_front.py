"""The speed/quality front of benchmarks/results/speed_quality.json as a PNG: held-out perplexity over
dense against the measured speed-up, prefill (left) and per-token generation (right), one marker per
method and target; the dense model sits at (1, 1). Reads only the results file (no model is run).

    python benchmarks/plot_speed_front.py [--results benchmarks/results/speed_quality.json]
                                          [--out benchmarks/results/speed_quality_front.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
MARKERS = {"ours": "o", "block_influence": "s", "sleb": "^", "replaceme_block_influence": "D", "flap_width": "v",
           "wanda_2of4": "x"}


def front_figure(result: dict):
    """A matplotlib figure of the front (two panels: prefill and decode speed-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [v for v in result["variants"] if v["name"] != "dense"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, key, label in ((axes[0], "prefill_speedup", "prefill"), (axes[1], "decode_speedup", "per-token generation")):
        for name, marker in MARKERS.items():
            mine = [r for r in rows if r["name"] == name]
            if not mine:
                continue
            axis.scatter([r[key] for r in mine], [r["ppl_ratio"] for r in mine], marker=marker, label=name, s=50)
            for r in mine:
                if r.get("target_speedup"):
                    axis.annotate(f"{r['target_speedup']}x", (r[key], r["ppl_ratio"]), fontsize=7,
                                  xytext=(3, 3), textcoords="offset points")
        axis.scatter([1.0], [1.0], marker="*", s=120, color="black", label="dense")
        axis.axvline(1.0, color="grey", lw=0.5)
        axis.set_xlabel(f"measured {label} speed-up over dense (shared CPU: noisy)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("held-out perplexity / dense")
    axes[1].legend(fontsize=8, loc="best")
    figure.suptitle(f"{result.get('model', '')}: quality against measured speed (labels: target speed-up)")
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(RESULTS / "speed_quality.json"))
    parser.add_argument("--out", default=str(RESULTS / "speed_quality_front.png"))
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("plot_speed_front needs matplotlib (pip install matplotlib)") from None
    from surgery.atomic_io import atomic_path

    figure = front_figure(json.loads(Path(args.results).read_text()))
    with atomic_path(args.out) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
