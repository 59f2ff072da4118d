#!/usr/bin/env python3
"""Draws goodput against random loss on the emulated 20 ms, 100 Mbit/s link from a
quictun-bench link-suite result (bench/results/link.json) as one PNG.

Usage: python3 bench/plot_loss.py bench/results/link.json docs/goodput-vs-loss.png
Needs matplotlib (pip install matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "tcp-cubic": "direct TCP, cubic",
    "tcp-bbr": "direct TCP, bbr",
    "adaptive": "tunnel (default: adaptive)",
}
# Where each series writes its values (points of different series often sit close together).
OFFSETS = {"tcp-cubic": (14, -4), "tcp-bbr": (0, 7), "adaptive": (0, -13)}


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    points = data["goodput"]
    losses = sorted({p["loss"] for p in points})
    # Evenly spaced categories: 0, 0.1, 1 and 5 % do not sit well on a linear or log axis.
    xs = list(range(len(losses)))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for sender, label in LABELS.items():
        ys = []
        for loss in losses:
            match = [p["goodput_mbps"] for p in points if p["sender"] == sender and p["loss"] == loss]
            ys.append(match[0] if match else float("nan"))
        if all(y != y for y in ys):
            continue
        ax.plot(xs, ys, marker="o", label=label)
        for x, y in zip(xs, ys):
            if y == y:
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points",
                            xytext=OFFSETS.get(sender, (0, 6)),
                            ha="center", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{loss * 100:g} %" for loss in losses])
    ax.set_xlabel("random loss, each direction")
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_ylim(0, 105)
    link = data.get("link", {})
    ax.set_title(
        f"goodput against loss: {link.get('rtt_ms', 20)} ms RTT, "
        f"{link.get('rate_bps', 100e6) / 1e6:g} Mbit/s, {link.get('queue_ms', 30)} ms queue, "
        f"one flow, {data.get('seconds', '?')} s each"
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
