"""sparsa.ruler's report (docs/learn.md, "The evaluation in PyTorch"): the rows of sparsa.ruler.evaluate
over teachers as mean and standard deviation, written as Markdown, JSON and pictures
(report_write), and the reports of runs split over calls joined into one (merge). sparsa.ruler
imports these names, so `sparsa.ruler.report_write` and `python3 -m sparsa.ruler --merge` are the
entry points."""

import json
import os
import statistics
import tempfile

import numpy as np


def _mean_std(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _pm(values, scale=100.0, digits=2):
    m, s = _mean_std(values)
    return "n/a" if m is None else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def _no_mask(r):
    """A summary row without a mask (FAVOR+): no density, so no target either ("-" as in the C++ report)."""
    return r["method"] != "dense" and all(x is None for x in r["density"])


def _target_text(r):
    """A summary row's target density as the tables show it: "" for dense, "-" without a mask."""
    return "" if r["method"] == "dense" else "-" if _no_mask(r) else f"{100 * r['target']:.2f}%"


def _target_line(r):
    """A summary row's target as the console lines print it, 7 characters wide."""
    return f"{'-':>7}" if _no_mask(r) else f"{100 * r['target']:6.2f}%"


def summary(report):
    """Rows over the teachers: method, target, accuracy mean/std, per kind, density, answers, times."""
    evals = report["evals"]
    out = []
    for i, row in enumerate(evals[0]["rows"]):
        per = [e["rows"][i] for e in evals]
        key = f"{row['method']} {row['target']}"
        timing = [e["timing"]["methods"].get(key) for e in evals]
        kinds = sorted(row["by_kind"])
        out.append({"method": row["method"], "target": row["target"], "detail": row["detail"],
                    "accuracy": [p["accuracy"] for p in per], "density": [p["density"] for p in per],
                    "answers": sum(p["answers"] for p in per),
                    "needle_by_depth": [[p["needle_by_depth"][b] for p in per] for b in range(10)],
                    "by_kind": {k: [p["by_kind"][k]["accuracy"] for p in per] for k in kinds},
                    "answers_by_kind": {k: sum(p["by_kind"][k]["answers"] for p in per) for k in kinds},
                    "select_ms": [t["select_ms"] for t in timing if t], "masks_ms": [t["masks_ms"] for t in timing if t],
                    "attention_ms": [t["attention_ms"] for t in timing if t],
                    "graph_ms": [t["graph_ms"] for t in timing if t and t.get("graph_ms") is not None],
                    "select_graph_ms": [t["select_graph_ms"] for t in timing if t and t.get("select_graph_ms") is not None]})
    return out


def _pictures(rows, report, directory):
    """depth.png (needle accuracy by depth, every row) and cost.png (accuracy against one layer's
    selection + sparse attention time, dense at its own) in `directory`, written through temporary
    files; nothing where matplotlib is missing (the report says so)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    wrote = []
    label = lambda r: r["method"] + ("" if r["method"] == "dense" or _no_mask(r) else f" {100 * r['target']:.1f}%")  # noqa: E731
    # one colour and marker per method, the same in both pictures and at every density
    methods = list(dict.fromkeys(r["method"] for r in rows))
    style = {name: (plt.get_cmap("tab20")(i % 20), "osD^v<>ph*P"[i % 11]) for i, name in enumerate(methods)}
    bold = ("dense", "pooled gate")
    everywhere = lambda r: r["method"] in ("dense", "diagonal") or _no_mask(r)   # noqa: E731  (in every density's panel)
    densities = sorted({r["target"] for r in rows if not everywhere(r)})

    # depth.png: one panel per density, each with dense, the diagonal and the rows without a mask (FAVOR+)
    panels = densities or [None]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 1.2 + 3.3 * len(panels)), sharex=True, squeeze=False)
    for ax, target in zip(axes[:, 0], panels):
        for r in rows:
            if target is not None and not (everywhere(r) or r["target"] == target):
                continue
            means = [_mean_std(v)[0] for v in r["needle_by_depth"]]
            ax.plot(range(10), [np.nan if m is None else 100 * m for m in means], marker=style[r["method"]][1],
                    color=style[r["method"]][0], label=r["method"], linewidth=2.5 if r["method"] in bold else 1.2)
        ax.set_ylabel("needle accuracy %")
        ax.set_ylim(-2, 102)
        ax.set_title(f"n = {report['n']:,}" + (f", {100 * target:g}% density" if target is not None else ""), fontsize=9)
    axes[-1, 0].set_xlabel("depth of the asked needle (0: start of the haystack, 9: end); mean over teachers")
    handles = {h.get_label(): h for ax in axes[:, 0] for h in ax.get_lines()}
    fig.legend(list(handles.values()), list(handles.keys()), fontsize=7, loc="center left", bbox_to_anchor=(0.86, 0.5))
    fig.suptitle("Needle accuracy by depth", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    figures = [("depth.png", fig)]

    # cost.png: every row, a method's densities joined by a line (marker size grows with density)
    e0 = report["evals"][0]
    dense_ms = statistics.median(e["timing"]["dense_ms"] for e in report["evals"])
    fig, ax = plt.subplots(figsize=(11, 5.5))
    # selection + sparse attention as one CUDA graph only where every selecting row has it (one
    # measure for all of them), else the eager sum; fixed rows: their attention alone
    selecting = [r for r in rows if r["select_ms"] and statistics.median(r["select_ms"]) > 0]
    graphs = bool(selecting) and all(r["graph_ms"] for r in selecting)
    points = {}   # method -> [(target, x, mean, sd)]
    for r in rows:
        if r["method"] == "dense":
            x = dense_ms
        elif graphs and r["graph_ms"]:
            x = statistics.median(r["graph_ms"])
        elif r["attention_ms"]:
            x = statistics.median(r["attention_ms"]) + (statistics.median(r["select_ms"]) if r["select_ms"] else 0)
        else:
            continue
        m, sd = _mean_std(r["accuracy"])
        points.setdefault(r["method"], []).append((r["target"], x, 100 * m, 100 * sd))
    top = max(densities, default=1.0)
    for name, pts in points.items():
        pts.sort()
        colour, marker = style[name]
        if len(pts) > 1:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], color=colour, linewidth=0.8, alpha=0.6)
        for k, (target, x, m, sd) in enumerate(pts):
            graded = len(densities) > 1 and name not in ("dense", "diagonal") and target in densities
            size = 4 + 6 * target / top if graded else 6
            ax.errorbar([x], [m], yerr=[sd], fmt=marker, color=colour, markersize=size, capsize=3,
                        label=name if k == 0 else None)
            if graded:
                ax.annotate(f"{100 * target:g}%", (x, m), textcoords="offset points", xytext=(4, 3), fontsize=6, color=colour)
    cudnn = [e["timing"]["cudnn_ms"] for e in report["evals"] if "cudnn_ms" in e["timing"]]
    if cudnn:
        ax.axvline(statistics.median(cudnn), color="grey", linestyle="--", label="cuDNN dense (time only)")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms for one layer of one sequence {e0['timing']['shape']}: selection + sparse attention"
                  + (" (one CUDA graph)" if graphs else " (eager, summed)"))
    ax.set_ylabel("accuracy %, mean ± deviation over teachers")
    ax.set_title(f"Accuracy against cost, n = {report['n']:,}, block {e0['block']}"
                 + (f"; densities {', '.join(f'{100 * d:g}%' for d in densities)} (larger markers: denser)" if len(densities) > 1 else ""))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    figures.append(("cost.png", fig))
    # the picture's rows in words too (a PNG text chunk), so that what it compares, the trivial
    # baselines (the diagonal, the identity gate, the best fixed pattern) included, can be found without viewing it
    described = f"sparsa.ruler at n = {report['n']}, teachers {', '.join(report['teachers'])}; rows: " + ", ".join(label(r) for r in rows)
    for name, f in figures:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".png")
        os.close(fd)
        f.savefig(tmp, dpi=110, metadata={"Description": described})
        plt.close(f)
        os.replace(tmp, os.path.join(directory, name))
        wrote.append(name)
    return wrote


def _at_shape_line(shape):
    """The report's sentence on the cost at a model's shape (time_at_shape's dict, teacher 1's run)."""
    both = shape.get("graph_ms")
    eager = shape["select_ms"] + shape["attention_ms"]
    gate = (f" (width {shape['width']}, keys {shape['key_pool']}" + (", queries row by row" if shape.get("query_pool") == "rows" else "")
            + ")") if "key_pool" in shape else ""
    line = (f"At a model's shape {shape['shape']} (random inputs, an untrained pooled gate{gate} keeping {shape['keep']} "
            f"blocks a row; teacher 1's run): the gate's selection {shape['select_ms']:.3f} ms + sparse attention "
            f"{shape['attention_ms']:.3f} ms = {eager:.3f} ms eager")
    if both is not None:
        line += f", {both:.3f} ms as one CUDA graph"
    if "cudnn_ms" in shape:
        def against(t):   # t against cuDNN's dense time, in words that read right both ways
            r = shape["cudnn_ms"] / t
            return f"{r:.2f}x faster than" if r >= 1 else f"{1 / r:.2f}x slower than"
        line += (f"; dense: sparsa {shape['dense_ms']:.3f} ms, cuDNN {shape['cudnn_ms']:.3f} ms: selection + sparse attention "
                 f"is {against(eager)} cuDNN eager" +
                 (f", {against(both)} it as a graph" if both is not None else "") +
                 f"; the selection alone is {100 * shape['select_ms'] / shape['cudnn_ms']:.1f}% of cuDNN's dense time" +
                 (f" eager, {100 * shape['select_graph_ms'] / shape['cudnn_ms']:.1f}% as a graph ({shape['select_graph_ms']:.3f} ms)."
                  if shape.get("select_graph_ms") is not None else "."))
    else:
        line += f"; dense: sparsa {shape['dense_ms']:.3f} ms."
    if "cudnn_ms" in shape and shape.get("block") not in (64, 128, 256):
        line += (f" (Blocks of {shape.get('block')}: sparsa's tensor-core kernels take blocks of 64, 128 or 256, so its "
                 "attention here is the simple kernel's, not a measure of the engine's speed.)")
    return line


def report_write(report, directory, command=""):
    """report.json (everything), report.md (the tables over teachers), depth.png and cost.png (where
    matplotlib is) in `directory`, each written to a temporary file and renamed."""
    os.makedirs(directory, exist_ok=True)
    e0 = report["evals"][0]
    rows = summary(report)
    dense_ms = [e["timing"]["dense_ms"] for e in report["evals"]]
    cudnn_ms = [e["timing"].get("cudnn_ms") for e in report["evals"] if e["timing"].get("cudnn_ms") is not None]
    lines = ["# Learned sparsity in PyTorch: RULER-style tasks at n = {:,} ({})".format(report["n"], e0["device"]), ""]
    commands = report.get("commands") or ([command] if command else [])
    if len(commands) == 1:
        lines += [f"Command: `{commands[0]}`", ""]
    elif commands:   # --merge
        lines += ["Merged (`python3 -m sparsa.ruler --merge`) from the runs of:", ""] + [f"- `{c}`" for c in commands] + [""]
    if report.get("pending"):
        lines += [f"**Partial:** {len(report['evals'])} of {len(report['evals']) + len(report['pending'])} teachers measured so far "
                  f"(still to come: {', '.join(report['pending'])}); the run rewrites this report after each teacher.", ""]
    lines += [f"Teachers: {', '.join(report['teachers'])}. Test stream: the first {e0['test_inputs']} sequences per teacher "
              f"(the same for every teacher); every choice on the first {e0['validation_inputs']} validation-stream sequences. "
              f"Blocks of {e0['block']} ({e0['blocks']} a row), {e0['dtype']}, attention through sparsa.torch. "
              "Accuracy over all answers, mean ± standard deviation over the teachers; density: kept share of the causal "
              "blocks; times: one layer of one sequence (shape {}), median of {}: the selection (scores and top-k on the "
              "device), the sparse attention under its blocks ({}), and on CUDA the selection alone and both together as one "
              "CUDA graph each (no Python or launch overhead: what a serving loop pays).".format(
                  e0["timing"]["shape"], e0["timing"].get("repeats", 11),
                  "written on the device: sparsa.torch.attention_top_k" if e0["device"].startswith("cuda") else
                  "made a MaskSet on the host first, timed apart"), ""]
    dense = " / ".join(f"{x:.3f}" for x in dense_ms)
    lines.append(f"Dense attention of one layer: sparsa {dense} ms" +
                 (f"; SDPA cuDNN {' / '.join(f'{x:.3f}' for x in cudnn_ms)} ms" if cudnn_ms else "") + " (per teacher).")
    shape = e0["timing"].get("at_shape")
    if shape:
        lines.append(_at_shape_line(shape))
    lines += ["", "| method | target | density | accuracy | answers | select ms | select, one graph, ms | MaskSet ms (host) "
              "| sparse attention ms | select + attention, one graph, ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        med = lambda v: f"{statistics.median(v):.3f}" if v else ""   # noqa: E731
        target = _target_text(r)
        density = "-" if _no_mask(r) else f"{_pm(r['density'])}%"
        lines.append(f"| {r['method']} | {target} | {density} | {_pm(r['accuracy'])}% | {r['answers']:,} | "
                     f"{med(r['select_ms'])} | {med(r['select_graph_ms'])} | {med(r['masks_ms'])} | {med(r['attention_ms'])} | "
                     f"{med(r['graph_ms'])} |")
    kinds = sorted(rows[0]["by_kind"])
    lines += ["", "Per task (accuracy %, mean ± deviation over teachers; answers over all teachers in the header):", "",
              "| method | target | " + " | ".join(f"{k} ({rows[0]['answers_by_kind'][k]:,})" for k in kinds) + " |",
              "|---|---:|" + "---:|" * len(kinds)]
    for r in rows:
        target = _target_text(r)
        lines.append(f"| {r['method']} | {target} | " + " | ".join(_pm(r["by_kind"][k]) for k in kinds) + " |")
    lines += ["", "Needle tasks (single, multikey, multivalue, multiquery) by the depth of the asked needle, 0 (start of the "
              "haystack) to 9 (its end): accuracy %, mean over teachers:", "",
              "| method | target | " + " | ".join(str(b) for b in range(10)) + " |", "|---|---:|" + "---:|" * 10]
    for r in rows:
        target = _target_text(r)
        cells = [_mean_std(v)[0] for v in r["needle_by_depth"]]
        lines.append(f"| {r['method']} | {target} | " + " | ".join("" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    lines += ["", "Rows:", ""] + [f"- {r['method']}" + ("" if _no_mask(r) else f" ({100 * r['target']:.2f}%)") +
                                  f": {r['detail']}" for r in rows[1:]]
    for label, e in zip(report["teachers"], report["evals"]):
        lines += [""] + [f"- {label}: {note}" for note in e["notes"]]
        lines.append(f"- {label}: evaluated in {e['seconds']:.0f} s")
    pictures = _pictures(rows, report, directory)
    lines += ["", ("Pictures: " + ", ".join(pictures) + " (needle accuracy by depth; accuracy against one layer's cost).")
              if pictures else "No pictures: matplotlib is not installed here."]
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", "\n".join(lines) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(directory, name))
    return rows


def merge(reports):
    """One report from the reports of runs that measured different teachers the same way (report.json
    of each, as dicts): the same n, block, test and validation counts, dtype and rows. Raises
    ValueError naming the first difference."""
    if not reports:
        raise ValueError("sparsa.ruler: nothing to merge")
    first = reports[0]
    same = ("n", "block", "test_inputs", "validation_inputs", "dtype")
    rows = lambda e: [(r["method"], r["target"]) for r in e["rows"]]  # noqa: E731
    teachers, evals, commands = [], [], []
    for i, r in enumerate(reports):
        if r.get("pending"):
            raise ValueError(f"sparsa.ruler: report {i + 1} is partial (teachers {', '.join(r['pending'])} were not measured)")
        for e in r["evals"]:
            for key in same:
                if e[key] != first["evals"][0][key]:
                    raise ValueError(f"sparsa.ruler: report {i + 1} has {key} = {e[key]}, report 1 {first['evals'][0][key]}: "
                                     "only runs made the same way merge")
            if rows(e) != rows(first["evals"][0]):
                raise ValueError(f"sparsa.ruler: report {i + 1} has other rows than report 1 (its options differ)")
        for t in r["teachers"]:
            if t in teachers:
                raise ValueError(f"sparsa.ruler: teacher {t} is in two of the reports")
        teachers += r["teachers"]
        evals += r["evals"]
        commands += r.get("commands", [])
    return {"n": first["n"], "teachers": teachers, "evals": evals, "commands": commands}
