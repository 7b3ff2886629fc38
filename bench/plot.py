"""Draws the throughput chart of `./build.sh bench` from its results.json.

    plot.py results.json throughput.png

One panel per message size: messages/s by concurrent sessions, one line per target (the limit,
Postfix, Haraka, mxnode; mxnode with the 20 ms receiver dashed). Reads only the JSON the driver wrote.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "limit": {"color": "#7f7f7f", "marker": "s", "label": "limit (smtp-source → smtp-sink)"},
    "postfix": {"color": "#d62728", "marker": "^", "label": "Postfix (queue on disk)"},
    "haraka": {"color": "#2ca02c", "marker": "D", "label": "Haraka → webhook (0 ms)"},
    "mxnode": {"color": "#1f77b4", "marker": "o", "label": "mxnode → webhook (0 ms)"},
    "mxnode-20ms": {
        "color": "#1f77b4",
        "marker": "o",
        "linestyle": "--",
        "markerfacecolor": "white",
        "label": "mxnode → webhook (20 ms)",
    },
}


def main(results_path, png_path):
    with open(results_path, encoding="utf-8") as f:
        report = json.load(f)
    scenarios = report["scenarios"]
    sizes = sorted({s["size"] for s in scenarios})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        label = next(s["size_label"] for s in scenarios if s["size"] == size)
        for target, style in STYLE.items():
            points = sorted(
                (s["sessions"], s["rate"])
                for s in scenarios
                if s["size"] == size and s["target"] == target
            )
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, linewidth=2, markersize=7, **style)
            for x, y in points:
                ax.annotate(
                    f"{y:,.0f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=8,
                    color=style["color"],
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        sessions = sorted({s["sessions"] for s in scenarios if s["size"] == size})
        ax.set_xticks(sessions)
        ax.set_xticklabels([str(n) for n in sessions])
        ax.set_xlabel("concurrent SMTP sessions")
        ax.set_ylabel("messages/s (median, log scale)")
        ax.set_title(f"{label} messages")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    machine = report.get("machine", {})
    fig.suptitle(
        "mxnode ingress throughput on loopback"
        f" ({machine.get('cores', '?')} cores, {machine.get('date', '')},"
        f" commit {machine.get('commit', '?')})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
