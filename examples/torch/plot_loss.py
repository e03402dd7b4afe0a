"""Loss curves of train_tiny_lm.py runs side by side: one line per CSV, labelled by its name.

    /usr/bin/python3 examples/torch/plot_loss.py sdpa.csv dense.csv window.csv -o loss.png \\
        --labels "SDPA dense" "sparsa, dense_causal.pat" "sparsa, window_causal.pat"
"""
import argparse
import csv
import pathlib

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="+", help="train_tiny_lm.py logs (step, loss, accuracy, seconds)")
    p.add_argument("-o", "--output", default="loss.png")
    p.add_argument("--labels", nargs="+", help="one per CSV (default: the files' names)")
    p.add_argument("--title", default="train_tiny_lm.py: associative recall, loss per step")
    a = p.parse_args()
    if a.labels and len(a.labels) != len(a.csv):
        p.error(f"--labels: {len(a.labels)} labels for {len(a.csv)} CSV files (give one per file)")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    styles = ["-", "--", ":", "-."]
    for i, path in enumerate(a.csv):
        steps, loss = read(path)
        ax.plot(steps, loss, styles[i % len(styles)], linewidth=1.6, label=a.labels[i] if a.labels else pathlib.Path(path).stem)
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy on the answers")
    ax.set_yscale("log")
    ax.set_title(a.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.output)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
