#!/usr/bin/env python3
"""Draws a cc-bench result (bench/results/cc-*.json) as one PNG: goodput per sender and
scenario, bottleneck-queue drops, and the sharing runs over time.

Usage: python3 bench/plot_cc.py bench/results/cc-issue11.json docs/cc-bench.png
Needs matplotlib (pip install matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SENDERS = ["tcp-cubic", "tcp-bbr", "quinn-cubic", "quinn-bbr", "adaptive"]


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    flows = data["flows"]
    scenarios = []
    for flow in flows:
        if flow["scenario"] not in scenarios:
            scenarios.append(flow["scenario"])
    senders = [s for s in SENDERS if any(f["sender"] == s for f in flows)]
    sharing = data.get("sharing", [])

    rows = 2 + (1 if sharing else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 4 * rows))
    bars(axes[0], flows, scenarios, senders, "goodput_mbps", 1.0,
         "goodput (Mbit/s) on a 100 Mbit/s link, 30 ms queue")
    axes[0].axhline(85, color="grey", linestyle=":", linewidth=1)
    axes[0].axhline(70, color="grey", linestyle=":", linewidth=1)
    bars(axes[1], flows, scenarios, senders, "queue_drop_share", 100.0,
         "packets dropped at the bottleneck queue (% of sent)")
    axes[1].axhline(5, color="grey", linestyle=":", linewidth=1)
    if sharing:
        ax = axes[2]
        for run in sharing:
            step = run["duration_s"] / max(len(run["ours_series_mbps"]), 1)
            t = [step * (i + 1) for i in range(len(run["ours_series_mbps"]))]
            label = f"vs {run['competitor']}"
            ours = ax.plot(t, run["ours_series_mbps"], label=f"adaptive {label}")
            ax.plot(t, run["theirs_series_mbps"], linestyle="--",
                    color=ours[0].get_color(), label=f"{run['competitor']} (vs adaptive)")
        ax.set_title("sharing one link (20 ms RTT): adaptive through the tunnel vs one TCP flow")
        ax.set_xlabel("s")
        ax.set_ylabel("Mbit/s")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


def bars(ax, flows, scenarios, senders, key, scale, title):
    width = 0.8 / len(senders)
    for i, sender in enumerate(senders):
        values = []
        for scenario in scenarios:
            match = [f for f in flows if f["sender"] == sender and f["scenario"] == scenario]
            values.append(match[0][key] * scale if match else 0.0)
        xs = [x + (i - (len(senders) - 1) / 2) * width for x in range(len(scenarios))]
        ax.bar(xs, values, width, label=sender)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(scenarios)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=len(senders))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_cc.py RESULT.json OUT.png")
    main(sys.argv[1], sys.argv[2])
