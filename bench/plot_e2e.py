"""Plot throughput and p99 latency against the window (requests in flight), ours vs baseline.

    python -m bench.e2e --sweep --json bench/results/e2e-sweep.json
    python -m bench.plot_e2e bench/results/e2e-sweep.json docs/e2e-window.png

Needs matplotlib (`pip install -e '.[bench]'`); the worker itself does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

LABELS = {"baseline": "bare pika echo (baseline)", "file": "intentus worker (default config)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("sweep_json")
    ap.add_argument("png")
    a = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = json.loads(Path(a.sweep_json).read_text())["sweep"]
    series: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for p in points:
        cell = series[p["contender"]][p["window"]]
        cell["msgs_per_s"].append(p["msgs_per_s"])
        cell["p99_ms"].append(p["p99_ms"])

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, by_window in series.items():
        windows = sorted(by_window)
        rate = [statistics.median(by_window[w]["msgs_per_s"]) for w in windows]
        p99 = [statistics.median(by_window[w]["p99_ms"]) for w in windows]
        style = "o-" if kind == "file" else "s--"
        left.plot(windows, rate, style, label=LABELS.get(kind, kind))
        right.plot(windows, p99, style, label=LABELS.get(kind, kind))
    all_windows = sorted({p["window"] for p in points})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_windows, [str(w) for w in all_windows])
        ax.set_xlabel("window (requests in flight)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    left.set_ylabel("replies per second")
    left.set_title("Throughput")
    right.set_ylabel("p99 round trip (ms)")
    right.set_yscale("log")
    right.set_title("p99 latency")
    fig.suptitle("600-byte requests over RabbitMQ (quorum queue), one no-op agent")
    fig.tight_layout()
    Path(a.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
