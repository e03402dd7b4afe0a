#!/usr/bin/env python3
"""The Markdown of bench/gpu_compare.py's results file, from its rows alone (no torch, no GPU), so
that the tables and issue 15's targets can be rebuilt and tested anywhere.

    python3 bench/gpu_report.py ROWS.json [--out FILE.md]

ROWS.json is what gpu_compare.py writes beside its copy of the results (cuda-<gpu><suffix>.json in
--copy-to): {"gpu", "command", "torch", "heads", "d", "passes", "notes", "kept_ratio", "rows"}.
A row is one timing: {"mask": shown name, "key": the mask it belongs to (e.g. "dense-16384", or
"dense-16384" for SDPA dense at n = 16,384), "n", "impl", "pass": "fwd" | "bwd" | "fwdbwd",
"ms": median, "pairs": allowed (query, key) pairs over all heads, "family": "flex" | "flex-table"
| "sdpa-cudnn" | "sdpa-fa2" | "sparsa", and optionally "auto" (sparsa's kernel 0), "block",
"peak_gib" (torch's peak allocation while timing), "timing" (how it was timed)}.

Rates: 4 * pairs * d FLOPs for the forward; the backward counts 2.5 x and forward + backward 3.5 x
that (FlashAttention's count: the backward does 5 matrix products of the forward's size to its 2).
"""
import argparse
import csv
import json
import os
import sys

PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}
PASSES = ("fwd", "bwd", "fwdbwd")


def rate(row, d):
    """TFLOP/s of a row, counted on allowed pairs with its pass's factor."""
    return PASS_FACTOR[row["pass"]] * 4 * row["pairs"] * d / row["ms"] / 1e9


def is_dense(key):
    return key.split("-")[0].startswith("dense")


# [SECTION] sparsa's rows (bench_cuda --csv)

def sparsa_rows_read(path, d, heads):
    """bench_cuda's CSV as rows: forward kernels ("15", pass fwd) and backward kernels ("bwd2",
    pass bwd). Every row must have this run's d and heads: rates and densities assume them."""
    rows = []
    with open(path) as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            if (int(r["d"]), int(r["heads"])) != (d, heads):
                raise SystemExit(f"gpu_compare: {path}:{line}: d = {r['d']}, {r['heads']} heads, but this run has "
                                 f"--d {d} --heads {heads} (give the CSV of a bench_cuda run with --d {d} --heads {heads})")
            auto = r.get("chosen_by") == "auto"
            kernel = r["kernel"]
            bwd = kernel.startswith("bwd")
            impl = f"sparsa bwd {kernel[3:]}" if bwd else f"sparsa kernel {kernel}"
            rows.append({"mask": r["mask"], "key": r["mask"], "n": int(r["n"]), "block": int(r["block"]),
                         "impl": impl + (" (auto)" if auto else ""), "pass": "bwd" if bwd else "fwd",
                         "ms": float(r["median_ms"]), "pairs": int(r["pairs"]), "family": "sparsa", "auto": auto,
                         "timing": f"bench_cuda, median of {r['runs']}"})
    return rows


def sparsa_pick(rows, key, pass_):
    """sparsa's row for a mask and pass: the auto-chosen kernel's (what a user gets), else the fastest."""
    mine = [r for r in rows if r["family"] == "sparsa" and r["key"] == key and r["pass"] == pass_]
    auto = [r for r in mine if r.get("auto")]
    return min(auto or mine, key=lambda r: r["ms"]) if mine else None


def sparsa_fwdbwd_add(rows):
    """sparsa's forward + backward: for each backward row, the sum of the medians of its forward
    (sparsa_pick) and that backward, each timed by bench_cuda on its own."""
    out = []
    for b in rows:
        if b["family"] != "sparsa" or b["pass"] != "bwd":
            continue
        f = sparsa_pick(rows, b["key"], "fwd")
        if f is None:
            continue
        out.append(dict(b, **{"pass": "fwdbwd", "ms": f["ms"] + b["ms"], "with_fwd": f["impl"],
                              "timing": f"sum of the medians of {f['impl']} and {b['impl']}"}))
    return rows + out


# [SECTION] the tables

def fmt(x, spec):
    return "" if x is None else format(x, spec)


def rows_ordered(rows):
    """By n, then each mask where it first appeared, then implementation (as before the backward)."""
    order = {}
    for r in rows:
        order.setdefault(r["key"], len(order))
    return sorted(rows, key=lambda r: (r["n"], order[r["key"]], r["impl"]))


def forward_table(rows, ctx):
    H, d, kept = ctx["heads"], ctx["d"], ctx["kept_ratio"]
    fwd = [r for r in rows if r["pass"] == "fwd"]
    flex_ms = {r["key"]: r["ms"] for r in fwd if r["family"] == "flex"}
    cudnn = {r["n"]: rate(r, d) for r in fwd if r["family"] == "sdpa-cudnn" and r["mask"] == "dense"}
    lines = [f"GPU: {ctx['gpu']}; bf16, batch 1, {H} heads, d = {d}; median times; TFLOP/s on allowed pairs (4 * pairs * d).",
             "x Flex: the time of FlexAttention as users write it (the pattern's predicate as mask_mod, create_block_mask "
             "compiled at its default 128-token blocks, random blocks as a precomputed table) / this time on the same "
             "mask (> 1: faster than Flex); the table-lookup Flex row (sparsa's block tables on the mask's own tiles) "
             "is shown but not compared against; "
             "/ cuDNN dense: this rate / cuDNN's dense rate at the same n; on kept blocks: the rate counting every "
             "pair of the kept blocks (partial blocks whole).", "",
             "| mask | n | density | implementation | ms | TFLOP/s | on kept blocks | x Flex | / cuDNN dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows_ordered(fwd):
        tf, key = rate(r, d), r["key"]
        xf = flex_ms[key] / r["ms"] if key in flex_ms else None
        xc = tf / cudnn[r["n"]] if r["n"] in cudnn else None
        kb = tf * kept[key] if key in kept else None
        lines.append(f"| {r['mask']} | {r['n']} | {r['pairs'] / (H * r['n'] ** 2):.4f} | {r['impl']} | {r['ms']:.3f} | "
                     f"{tf:.1f} | {fmt(kb, '.1f')} | {fmt(xf, '.2f')} | {fmt(xc, '.2f')} |")
    return lines


def backward_table(rows, ctx):
    """One line per (mask, implementation): its backward and its forward + backward."""
    H, d, kept = ctx["heads"], ctx["d"], ctx["kept_ratio"]
    grad = [r for r in rows if r["pass"] in ("bwd", "fwdbwd")]
    flex = {(r["key"], r["pass"]): r["ms"] for r in grad if r["family"] == "flex"}
    cudnn = {r["n"]: rate(r, d) for r in grad if r["family"] == "sdpa-cudnn" and r["mask"] == "dense" and r["pass"] == "bwd"}
    groups = {}
    for r in rows_ordered(grad):
        groups.setdefault((r["key"], r["impl"]), {})[r["pass"]] = r
    lines = [f"GPU: {ctx['gpu']}; bf16, batch 1, {H} heads, d = {d}; median times; TFLOP/s on allowed pairs, the backward "
             "counted as 2.5 x the forward's FLOPs (2.5 * 4 * pairs * d) and forward + backward as 3.5 x (FlashAttention's "
             "count). Backward (PyTorch): torch.autograd.grad(O, (q, k, v), dO, retain_graph=True) timed alone after one "
             "forward outside the timer; fwd+bwd (PyTorch): the forward and that autograd.grad timed together. sparsa: "
             "bench_cuda's backward (D = rowsum(dO * O), the dK / dV pass, the dQ pass) from its own forward's O and "
             "log-sum-exp; sparsa's fwd+bwd is NOT one timed sequence but the sum of the medians of its forward (the "
             "kernel named in brackets: the auto-chosen one, else the fastest) and this backward. x Flex: fair "
             "FlexAttention's time (as users write it, backward by its compiled autograd) / this time, same pass; "
             "/ cuDNN dense: this backward rate / cuDNN's dense backward rate at the same n; peak GiB: "
             "torch.cuda.max_memory_allocated while timing (PyTorch rows; everything the process holds).", "",
             "| mask | n | density | implementation | bwd ms | bwd TFLOP/s | bwd on kept blocks | bwd x Flex | "
             "bwd / cuDNN dense | fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd x Flex | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (key, impl), by in groups.items():
        b, fb = by.get("bwd"), by.get("fwdbwd")
        first = b or fb
        n = first["n"]
        label = impl + (f" [fwd+bwd with {fb['with_fwd']}]" if fb and "with_fwd" in fb else "")
        cells = []
        for r in (b, fb):
            if r is None:
                cells.append(None)
                continue
            tf = rate(r, d)
            cells.append((r["ms"], tf, flex[(key, r["pass"])] / r["ms"] if (key, r["pass"]) in flex else None))
        bms, btf, bxf = cells[0] if cells[0] else (None, None, None)
        fms, ftf, fxf = cells[1] if cells[1] else (None, None, None)
        kb = btf * kept[key] if btf is not None and key in kept else None
        xc = btf / cudnn[n] if btf is not None and n in cudnn else None
        peaks = [r["peak_gib"] for r in (b, fb) if r is not None and r.get("peak_gib") is not None]
        lines.append(f"| {first['mask']} | {n} | {first['pairs'] / (H * n * n):.4f} | {label} | {fmt(bms, '.3f')} | "
                     f"{fmt(btf, '.1f')} | {fmt(kb, '.1f')} | {fmt(bxf, '.2f')} | {fmt(xc, '.2f')} | {fmt(fms, '.3f')} | "
                     f"{fmt(ftf, '.1f')} | {fmt(fxf, '.2f')} | {fmt(max(peaks) if peaks else None, '.2f')} |")
    return lines


def memory_lines(rows, ctx):
    """The largest peak during PyTorch's backward timings at each n, against the O(n d) tensors."""
    H, d = ctx["heads"], ctx["d"]
    out = []
    for n in sorted({r["n"] for r in rows if r.get("peak_gib") is not None}):
        with_peak = [r for r in rows if r["n"] == n and r.get("peak_gib") is not None]
        top = max(with_peak, key=lambda r: r["peak_gib"])
        tensors = 8 * H * n * d * 2 / 2 ** 30   # q, k, v, O, dO, dQ, dK, dV: [1, H, n, d] bf16
        scores = H * n * n * 2 / 2 ** 30
        out.append(f"Memory at n = {n:,}: the largest peak while timing a backward is {top['peak_gib']:.2f} GiB "
                   f"({top['impl']}, {top['mask']}, {top['pass']}), {top['peak_gib'] / tensors:.2f} x the "
                   f"{tensors:.2f} GiB of the eight [1, {H}, n, {d}] bf16 tensors (q, k, v, O, dO, dQ, dK, dV); "
                   f"the n x n scores of all heads in bf16 would be {scores:.1f} GiB.")
    return out


# [SECTION] issue 15's targets

def verdict(measured, target, ms):
    """'met', or by how much it is missed: the share short and the time sparsa would need."""
    if measured >= target:
        return "met"
    return (f"missed by {100 * (1 - measured / target):.1f}%: {ms:.3f} ms would need to be {ms * measured / target:.3f} ms "
            f"({target / measured:.2f}x faster)")


def dense_reference(rows, key, block, n, pass_):
    """sparsa's own dense row for a pattern: the dense mask of the same block at the same n, else the
    nearest n (ties: the larger), else any block."""
    dense = {r["key"]: r for r in rows if r["family"] == "sparsa" and is_dense(r["key"]) and r["pass"] == pass_}
    if not dense:
        return None
    same = [k for k, r in dense.items() if r.get("block") == block] or list(dense)
    best = min(same, key=lambda k: (abs(dense[k]["n"] - n) / max(n, dense[k]["n"]), -dense[k]["n"]))
    return sparsa_pick(rows, best, pass_)


def targets(rows, ctx):
    """Issue 15's "Done when" comparisons, each computed from the rows (sparsa's fwd+bwd rows added
    by sparsa_fwdbwd_add): a summary line and a table."""
    d, kept = ctx["d"], ctx["kept_ratio"]
    table = ["| target (issue 15) | case | measured | target | verdict |", "|---|---|---|---|---|"]
    count = {"met": 0, "missed": 0, "not measured": 0}

    def add(what, case, measured, target, ms, shown=None):
        if measured is None:
            count["not measured"] += 1
            table.append(f"| {what} | {case} | | {target:g} | not measured in this run |")
            return
        v = verdict(measured, target, ms)
        count["met" if v == "met" else "missed"] += 1
        table.append(f"| {what} | {case} | {shown or f'{measured:.3f}'} | {target:g} | {v} |")

    def peer(family, n, pass_, mask="dense"):
        found = [r for r in rows if r["family"] == family and r["n"] == n and r["pass"] == pass_ and r["mask"] == mask]
        return found[0] if found else None

    def fair_flex(key, pass_):
        found = [r for r in rows if r["family"] == "flex" and r["key"] == key and r["pass"] == pass_]
        return found[0] if found else None

    # dense at 16,384: forward against cuDNN, backward against FlashAttention-2 (cuDNN the further aim)
    for pass_, family, name, target in (("fwd", "sdpa-cudnn", "cuDNN's", 0.9), ("bwd", "sdpa-fa2", "FlashAttention-2's", 1.0),
                                        ("bwd", "sdpa-cudnn", "cuDNN's (the further aim)", 1.0)):
        s, p = sparsa_pick(rows, "dense-16384", pass_), peer(family, 16384, pass_)
        what = f"{'forward' if pass_ == 'fwd' else 'backward'}, dense, n = 16,384: sparsa's rate / {name}"
        if s is None or p is None:
            add(what, "dense-16384", None, target, None)
        else:
            m = rate(s, d) / rate(p, d)
            add(what, f"{s['impl']} {rate(s, d):.1f} vs {rate(p, d):.1f} TFLOP/s", m, target, s["ms"])
    # against fair FlexAttention
    for key, pass_, target in (("bigbird64-65536", "fwdbwd", 3.0), ("window256-65536", "fwd", 1.5),
                               ("window256-65536", "fwdbwd", 1.5)):
        what = f"{key.split('-')[0]}, n = 65,536, {'forward + backward' if pass_ == 'fwdbwd' else 'forward'}: fair Flex's time / sparsa's"
        s, p = sparsa_pick(rows, key, pass_), fair_flex(key, pass_)
        if s is None or p is None:
            add(what, key, None, target, None)
        else:
            label = f"{s['with_fwd']} + {s['impl'][len('sparsa '):]}" if "with_fwd" in s else s["impl"]
            add(what, f"Flex {p['ms']:.3f} ms vs {label} {s['ms']:.3f} ms", p["ms"] / s["ms"], target, s["ms"])
    # every sparse pattern's rate on kept blocks against sparsa's own dense rate, forward and backward
    keys = []
    for r in rows_ordered([r for r in rows if r["family"] == "sparsa" and not is_dense(r["key"])]):
        if r["key"] not in keys:
            keys.append(r["key"])
    for key in keys:
        for pass_ in ("fwd", "bwd"):
            s = sparsa_pick(rows, key, pass_)
            if s is None:
                continue
            what = f"{'forward' if pass_ == 'fwd' else 'backward'}, rate on kept blocks / sparsa's dense rate"
            ref = dense_reference(rows, key, s.get("block"), s["n"], pass_)
            if ref is None or key not in kept:
                add(what, f"{key} ({'no dense row' if ref is None else 'mask file not given'})", None, 0.8, None)
                continue
            kb, dr = rate(s, d) * kept[key], rate(ref, d)
            add(what, f"{key} {s['impl']} {kb:.1f} vs {ref['key']} {ref['impl']} {dr:.1f} TFLOP/s", kb / dr, 0.8, s["ms"])
    summary = (f"Targets: {count['met']} met, {count['missed']} missed, {count['not measured']} not measured in this run "
               f"(each verdict computed from the rows above; \"missed by\" is 1 - measured / target, and the time sparsa's "
               f"row would need).")
    return [summary, ""] + table


# [SECTION] the file

def report(data):
    """The results file's text from gpu_compare.py's JSON (see the module's comment)."""
    ctx = {"gpu": data["gpu"], "heads": data["heads"], "d": data["d"], "kept_ratio": data.get("kept_ratio", {})}
    rows = sparsa_fwdbwd_add(data["rows"])
    passes = data.get("passes", list(PASSES))
    parts = [f"# CUDA engine on {data['gpu']}", "", f"Command: `{data['command']}` (torch {data['torch']}).", ""]
    for line in data.get("notes", []):
        parts += [line, ""]
    if "fwd" in passes:
        parts += ["## Forward", ""] + forward_table(rows, ctx) + [""]
    if "bwd" in passes or "fwdbwd" in passes:
        parts += ["## Backward and forward + backward", ""] + backward_table(rows, ctx) + [""]
        for line in memory_lines(rows, ctx):
            parts += [line, ""]
    parts += ["## Issue 15's targets", ""]
    if data["d"] == 128 and data["heads"] == 16:
        parts += targets(rows, ctx)
    else:
        parts.append(f"Not evaluated: the targets are for 16 heads and d = 128; this run has {data['heads']} heads, d = {data['d']}.")
    return "\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows_json")
    ap.add_argument("--out", default=None, help="write the Markdown here (default: print it)")
    args = ap.parse_args()
    try:
        with open(args.rows_json) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"gpu_report: {args.rows_json}: cannot read ({e}) (give the .json gpu_compare.py wrote)")
    text = report(data)
    if args.out is None:
        sys.stdout.write(text)
        return
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
