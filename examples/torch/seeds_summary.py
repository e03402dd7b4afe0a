"""train_tiny_lm.py runs over several seeds, grouped by attention: a table and a picture of how each
group's loss goes, seed by seed, so that two attentions are compared against the spread between
seeds of one (a single seed each cannot tell a difference from the step at which a run happens to
learn the task).

    python3 examples/torch/seeds_summary.py --group "SDPA dense" sdpa-seed*.csv \\
        --group "sparsa, dense_causal.pat" dense-seed*.csv -o seeds   # seeds.md, seeds.json, seeds.png

Per run: the first step whose loss is below --learned (0.5: the model has learnt to look the answers
up; the task's loss before that sits near log(keys)), the loss at --at steps, the last step's loss
and accuracy, and the mean time a step (from the first logged step to the last). Per group: how many runs learnt the task, the median and
range of the step they learnt it at, and the median and range of the loss at each --at step. The
picture: each group's median loss per step with the band between its lowest and highest run. The
runs of a group must have the same steps."""
import argparse
import csv
import json
import pathlib
import statistics
import sys


def read(path):
    """{step, loss, accuracy, seconds} lists of one train_tiny_lm.py CSV."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"seeds_summary.py: cannot read {path}: {e.strerror}")
    need = {"step", "loss", "accuracy", "seconds"}
    if not rows or not need <= set(rows[0]):
        sys.exit(f"seeds_summary.py: {path} is not a train_tiny_lm.py log (columns {', '.join(sorted(need))})")
    return {key: [float(r[key]) for r in rows] for key in need}


def run_summary(path, learned, at):
    r = read(path)
    steps = [int(s) for s in r["step"]]
    first = next((s for s, loss in zip(steps, r["loss"]) if loss < learned), None)
    span = r["seconds"][-1] - r["seconds"][0]   # the log's seconds are rounded: time the whole run, not a step
    return {"csv": str(path), "steps": steps, "loss": r["loss"], "learned_at": first,
            "loss_at": {str(s): r["loss"][steps.index(s)] for s in at if s in steps},
            "last_loss": r["loss"][-1], "last_accuracy": r["accuracy"][-1],
            "step_ms": 1000 * span / (len(steps) - 1) if len(steps) > 1 else None}


def spread(values):
    """'median (low to high)' of numbers, or '-' for none."""
    if not values:
        return "-"
    return f"{statistics.median(values):.4g} ({min(values):.4g} to {max(values):.4g})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", nargs="+", action="append", required=True, metavar=("LABEL", "CSV"),
                   help="a label, then the CSVs of its runs (one per seed)")
    p.add_argument("--learned", type=float, default=0.5, help="the loss below which a run has learnt the task (0.5)")
    p.add_argument("--at", default="", help="steps to report the loss at, comma-separated (default: a quarter, half, the last)")
    p.add_argument("-o", "--output", default="seeds", help="writes OUTPUT.md, OUTPUT.json and OUTPUT.png")
    a = p.parse_args(argv)
    groups = []
    for g in a.group:
        if len(g) < 2:
            p.error(f"--group {g[0]!r}: give the label, then at least one CSV")
        groups.append((g[0], g[1:]))
    first_rows = read(groups[0][1][0])
    last = int(first_rows["step"][-1])
    try:
        at = [int(x) for x in a.at.split(",") if x] or sorted({max(1, last // 4), max(1, last // 2), last})
    except ValueError:
        p.error(f"--at {a.at!r}: give step numbers separated by commas")
    out = {"learned_below": a.learned, "at": at, "groups": []}
    for label, paths in groups:
        runs = [run_summary(path, a.learned, at) for path in paths]
        if any(r["steps"] != runs[0]["steps"] for r in runs):
            sys.exit(f"seeds_summary.py: the runs of {label!r} do not have the same steps")
        out["groups"].append({"label": label, "runs": runs})

    lines = [f"Runs grouped by attention: loss per step of each seed (train_tiny_lm.py logs). \"Learnt\": the first step "
             f"with a loss below {a.learned}.", "",
             "| group | runs | learnt | learnt at step: median (lowest to highest) | "
             + " | ".join(f"loss at {s}: median (range)" for s in at) + " | last accuracy: median (range) | ms a step (median of the runs' means) |",
             "|---|---:|---:|---|" + "---|" * len(at) + "---|---:|"]
    for g in out["groups"]:
        runs = g["runs"]
        learned_at = [r["learned_at"] for r in runs if r["learned_at"] is not None]
        row = [g["label"], str(len(runs)), f"{len(learned_at)} of {len(runs)}", spread(learned_at)]
        row += [spread([r["loss_at"][str(s)] for r in runs if str(s) in r["loss_at"]]) for s in at]
        row += [spread([r["last_accuracy"] for r in runs]),
                f"{statistics.median([r['step_ms'] for r in runs if r['step_ms'] is not None]):.2f}"
                if any(r["step_ms"] is not None for r in runs) else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per run:", "", "| group | csv | learnt at | last loss | last accuracy |", "|---|---|---:|---:|---:|"]
    for g in out["groups"]:
        for r in g["runs"]:
            lines.append(f"| {g['label']} | {pathlib.Path(r['csv']).name} | "
                         f"{r['learned_at'] if r['learned_at'] is not None else 'not within ' + str(r['steps'][-1])} | "
                         f"{r['last_loss']:.4f} | {r['last_accuracy']:.3f} |")
    md, js, png = (pathlib.Path(a.output + ext) for ext in (".md", ".json", ".png"))
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps(out, indent=1) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"seeds_summary.py: no matplotlib here: wrote {md} and {js}, no picture")
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, g in enumerate(out["groups"]):
        steps = g["runs"][0]["steps"]
        per_step = list(zip(*[r["loss"] for r in g["runs"]]))
        color = f"C{i}"
        ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], color=color, alpha=0.2, linewidth=0)
        ax.plot(steps, [statistics.median(v) for v in per_step], color=color, linewidth=1.6,
                label=f"{g['label']} (median and range of {len(g['runs'])} seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy on the answers")
    ax.set_yscale("log")
    ax.set_title("train_tiny_lm.py over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {md}, {js} and {png}")


if __name__ == "__main__":
    main()
