"""sparsa.ruler: the RULER-style evaluation of lab teachers in PyTorch, for the GPU (docs/learn.md,
"The evaluation in PyTorch"). `sparsa learn ruler` measures teachers with the C++ engine on the
CPU, where n = 4,096 takes 1.2 s a test sequence and 16,384 is out of reach; this module runs the
same streams, the same selection rules and the same scoring through sparsa.lab's teacher, with
each selector's blocks given to sparsa.torch.attention (the CUDA kernels on the GPU, the CPU
engine elsewhere), so that the GPU machine measures thousands of answers at n = 4,096 to 65,536.

    import sparsa.lab as lab, sparsa.ruler as ruler
    teachers = [lab.LabTeacher.load(f).to("cuda") for f in ("s1.bin", "s2.bin", "s3.bin")]
    report = ruler.evaluate(teachers, n=16384, densities=[0.125], block=64, test_inputs=400)
    ruler.report_write(report, "learn-ruler-16384")     # report.md, report.json

Rows (each per density but dense, the diagonal and favor+), as the C++ evaluation names them:
  dense            the teacher's own causal attention
  diagonal         every query block its own block alone
  identity gate    the exact-score selector: per query row its share of softmax(q k^T / sqrt(d)) over
                   every key, per key block; a block row's score the largest share among its rows
                   (select_exact); it costs a dense q k^T
  best fixed       the search's fixed candidates and the prelude's Longformer and BigBird at a density
                   not above the target, the most accurate on the validation stream
  moba             mean query . mean key per block pair (select_moba)
  quest            Quest's bound, the largest over the block's queries (select_quest)
  vertical-slash   MInference's estimate from the last 64 queries (select_vertical_slash)
  duo              DuoAttention's split (duo_budget): the dense heads the density affords, ranked on
                   validation, the rest one sink block and a window
  indexer          DeepSeek's lightning indexer (learn/indexer.hpp), trained by KL to the head-summed
                   attention on sampled rows, early stopping per layer on validation
  window, longformer, bigbird   each family's largest pattern within the density (ruler_fixed_families)
  pooled gate      SeerAttention's gate (learn/pooled_gate.hpp): mean q and mean k of each block through
                   small maps, trained by KL to the teacher's block-pooled attention on training-stream
                   sequences, early stopping per head on validation-stream sequences
  search script    the search's static script (ruler_search_script): per head the candidate pattern of most
                   recall on 4 training-stream sequences' attention within the density (_search_methods)
  lsh              Reformer's LSH as the C++ evaluation's content family (learn/ruler_families.cpp):
                   lsh(n / chunk buckets, rounds, chunk, shared_qk = false), causal, rotations from seed 0,
                   for chunk 8 to 128 (at most 512 buckets) and, past the C++ grid, 256, 512, ... while n / chunk >= 16
                   (ruler_families._content_chunks), and 1, 2 or 4 rounds; at each density the most accurate on validation
                   among those whose pairs kept / causal pairs there is within it (_content_methods). Its density
                   is that figure on the first 4 validation sequences (ruler_families.CONTENT_COUNT_INPUTS); on CUDA it runs on the CUDA content engine (on device memory,
                   sparsa.torch), and is timed by that engine's device times
  anchors          anchor buckets as the C++ evaluation's content family: anchors(n / chunk, 1, chunk,
                   shared_qk = false), causal, each layer and head its own anchors fitted by spherical
                   k-means on 8 training-stream sequences' q and k rows (sparsa.anchors_fit), for the same
                   chunks; chosen on validation and timed as LSH
  favor+           Performer's FAVOR+ (sparsa.selectors.favor_attention): 256 positive orthogonal random
                   features per head (favor_features), drawn as the script's favor(256) draws them (seed
                   0), causal prefix sums; no mask: its estimate in place of every layer's attention
                   (ruler_favor). Once, with the families; no density (the report shows "-", as the C++ one)
Every selector keeps each row's diagonal block and the top others (key blocks c <= r), keep blocks
a row in all (blocks_per_row), ties to the lower block (sparsa.selectors.top_k_blocks); the chosen
blocks are cut to the causal mask, as the C++ evaluation cuts them. On CUDA they are ranked and
written as a top-k layout's columns by one kernel (sparsa.torch.select_top_k) for
sparsa.torch.attention_top_k (masks uploaded once: no host step); elsewhere they become
sparsa.learn.block_masks for sparsa.torch.attention.

The selectors themselves (scores, top-k, the pooled gate, the indexer) and FAVOR+ are in sparsa.selectors.

Index
  [SECTION] evaluation     the selectors' rows, the test stream, accuracy per task and depth, timings
  then main(), the command. Beside it: a teacher run under a row (the row, the runner, scoring,
  the dense layers) is sparsa.ruler_run; the family rows (FAVOR+, the search script, LSH and
  anchors chosen on validation) sparsa.ruler_families; the report (mean and deviation over
  teachers, Markdown, JSON and pictures, merged runs) sparsa.ruler_report. This module imports
  the names it uses of each.
"""

import json
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import sparsa
import sparsa.lab as lab
import sparsa.torch as sparsa_torch
from sparsa.selectors import (KEY_POOLS, Indexer, PooledGate, _block_keys, _block_means, blocks_per_row, exact_scores,
                              moba_scores, pooled_targets, quest_scores, vertical_slash_scores, TARGETS)

__all__ = ["evaluate", "evaluate_teacher", "merge", "report_write", "summary", "time_at_shape"]


# the report (sparsa.ruler_report), here as sparsa.ruler's own names
from sparsa.ruler_report import _pm, _target_line, merge, report_write, summary  # noqa: F401
# a teacher run under a row (sparsa.ruler_run) and the family rows (sparsa.ruler_families), likewise
from sparsa.ruler_run import _Method, _Runner, _accuracy, _dense_layers, _kv_per_query_head, _score, _time_ms  # noqa: F401
from sparsa.ruler_families import (LSH_ROUNDS, _anchor_grid, _content_chunks, _content_methods, _favor_method,  # noqa: F401
                                   _lsh_masks, _search_methods)

# [SECTION] evaluation


def _gate_examples(runner, data, batch, targets=("sum",), rows=False):
    """(q_mean, k_keys, {target: pooled}, q_rows) of every layer of each sequence, from the dense
    teacher: [inputs, layers, heads, blocks, d], [inputs, layers, heads, blocks, 3 d] (_block_keys
    "mean+max+min": the first d columns are "mean"'s), for each of `targets` (pooled_targets' pools)
    [inputs, layers, heads, blocks, blocks], all float64; and with `rows` the queries themselves
    [inputs, layers, heads, n, d] in float32 (a query_pool "rows" gate's input), else None."""
    parts = {}   # first -> [layer] -> (q_mean, k_keys, target, target, ..., q rows)
    _dense_layers(runner, data, batch, lambda first, layer, q, k: parts.setdefault(first, []).append(
        (_block_means(q, runner.block), _block_keys(k, runner.block, "mean+max+min"),
         *pooled_targets(q, k, runner.block, True, pools=targets).values(), q.float() if rows else q.new_zeros(0))))
    cat = [torch.cat([torch.stack([per[i] for per in parts[first]], 1) for first in sorted(parts)])
           for i in range(3 + len(targets))]
    return cat[0].double(), cat[1].double(), {t: x.double() for t, x in zip(targets, cat[2:-1])}, cat[-1] if rows else None


def _indexer_examples(runner, data, batch, rows):
    """[layer] -> a list of Indexer.examples, one per batch of sequences, from the dense teacher's q, k."""
    layers = len(runner.t.layers)
    per_layer = [[] for _ in range(layers)]
    _dense_layers(runner, data, batch, lambda first, layer, q, k: per_layer[layer].append(
        Indexer.examples(q, k, runner.block, rows, seed=first * layers + layer)))
    return per_layer


# Rows a run may leave out (evaluate_teacher's skip, --skip): "families" is window, Longformer, BigBird,
# the search script, LSH, anchors and FAVOR+ together, as families=False.
SKIPPABLE = ("moba", "quest", "vertical-slash", "duo", "indexer", "search", "lsh", "anchors", "families")


def _selection_share(n, block, density, width, key_pool, query_pool, device, repeats):
    """A gate configuration's selection time at a model's shape (time_at_shape: 16 heads of width
    128, as one CUDA graph) over cuDNN's dense causal attention in the same call."""
    t = time_at_shape(n, block=block, density=density, width=width, device=device, repeats=repeats, key_pool=key_pool,
                      query_pool=query_pool)
    if "cudnn_ms" not in t or t.get("select_graph_ms") is None:
        raise RuntimeError(f"sparsa.ruler: selection budget: no cuDNN or graph time at the model's shape ({t.get('cudnn_error', '')})")
    return t["select_graph_ms"] / t["cudnn_ms"]


def _within_budget(configs, budget, share):
    """The gate configurations whose selection share (share(config): selection time / dense time) is
    at most `budget`, and one note per configuration saying its share and whether it stays; where
    none does, the cheapest alone (said so)."""
    shares = [share(c) for c in configs]
    kept = [c for c, x in zip(configs, shares) if x <= budget]
    lines = [f"selection budget {100 * budget:g}% of dense: width {c[0]}, keys {c[1]}, queries {c[4]}: selection "
             f"{100 * x:.1f}% at the model's shape, " + ("kept" if x <= budget else "left out") for c, x in zip(configs, shares)]
    if not kept:
        cheapest = min(range(len(configs)), key=shares.__getitem__)
        kept = [configs[cheapest]]
        lines.append(f"selection budget {100 * budget:g}%: no configuration within it; the cheapest alone is tried")
    return kept, lines


def _duo_method(runner, validation, batch, n, layers, heads, target, block):
    """DuoAttention's row at `target`: as many dense (retrieval) heads as the budget holds, ranked on
    validation by the accuracy lost when each head alone streams; the rest sink + window."""
    budget, _ = sparsa.learn.duo_masks(n, layers, heads, target, [], block, True)
    retrieval, ranking = [False] * (layers * heads), ""
    if budget["retrieval"] > 0:
        loss = []
        for lh in range(layers * heads):
            one = [True] * (layers * heads)
            one[lh] = False
            _, sets = sparsa.learn.duo_masks(n, layers, heads, target, one, block, True)
            loss.append((_accuracy(runner, _Method("duo", target, "", fixed=sets, density=1.0), validation, batch), lh))
        loss.sort(key=lambda x: x[0])   # stable: ties keep the head order, as the C++ stable_sort
        for _, lh in loss[:budget["retrieval"]]:
            retrieval[lh] = True
        ranking = "; validation accuracy with each head alone streaming: " + ", ".join(
            f"L{lh // heads}H{lh % heads} {100 * acc:.1f}%" for acc, lh in loss)
    _, sets = sparsa.learn.duo_masks(n, layers, heads, target, retrieval, block, True)
    dense_heads = ", ".join(f"L{lh // heads}H{lh % heads}" for lh in range(layers * heads) if retrieval[lh])
    over = " (one dense head is over the budget)" if budget["retrieval"] == 0 else ""
    return _Method("duo", target, f"{budget['retrieval']} of {layers * heads} heads dense" + (f" ({dense_heads})" if dense_heads else "") +
                   f", the rest 1 sink block + a window of {budget['window_blocks']} blocks" + (ranking or over),
                   fixed=sets, density=budget["density"])


def evaluate_teacher(teacher, n, densities=(0.125,), block=16, test_inputs=100, validation_inputs=20, batch=8,
                     pooled_gate_inputs=64, pooled_gate_width=32, pooled_gate_steps=400, pooled_gate_configs=None, seed=1,
                     indexer_inputs=64, indexer_heads=2, indexer_width=8, indexer_steps=300, indexer_rows=128,
                     families=True, favor_features=256, search_inputs=4, dtype=None, time_repeats=11, skip=(), progress=print,
                     selection_budget=None):
    """One teacher (a sparsa.lab.LabTeacher on its device) at length n: every row's accuracy on the test
    stream (its first test_inputs sequences), per task and per depth, its mean kept share of the
    causal blocks, and the selection and attention times of one layer on one sequence. Every choice
    (the best fixed pattern, the pooled gate's early stopping) is made on the validation stream;
    the pooled gate learns from training-stream sequences of `seed` (from index 2^40, as the C++
    calibration inputs). pooled_gate_configs: (width, key pool[, training sequences[, target[,
    query pool]]]) to train, the most accurate on validation at the first density kept (None: width
    pooled_gate_width, mean keys, as the C++ gate; training sequences: pooled_gate_inputs when
    missing or None, the first ones of one training set; target: pooled_targets' "sum", the C++
    gate's, or "max"; query pool: "mean" or "rows", PooledGate's). indexer_inputs: training-stream sequences the
    lightning indexer learns from (0: no indexer row), indexer_rows query rows of each. families: also window, Longformer and BigBird at each
    density (fixed_families), the search's script from search_inputs training-stream sequences
    (_search_methods), LSH and anchors at each density (_content_methods), and once FAVOR+ with favor_features features per head (seed 0, causal;
    no density: None in the rows, "-" in the report), as the C++ evaluation's content families.
    selection_budget: a fraction (CUDA only), or None: the gate configurations whose selection at a
    model's shape (time_at_shape, one CUDA graph) takes more than that share of cuDNN's dense time in
    the same call are left out before any is trained, so the one chosen on validation meets the
    cost bar by construction (each configuration's share in the notes).
    dtype: "bfloat16" (autocast; the default on CUDA) or "float32". skip: rows of SKIPPABLE to leave out
    (a long run of the bar's rows alone; dense and the trivial baselines always run)."""
    unknown = set(skip) - set(SKIPPABLE)
    if unknown:
        raise ValueError(f"sparsa.ruler: cannot skip {', '.join(sorted(unknown))} (only {', '.join(SKIPPABLE)})")
    families = families and "families" not in skip
    indexer_inputs = 0 if "indexer" in skip else indexer_inputs
    if not teacher.model["causal"]:
        raise ValueError("sparsa.ruler: the teacher must be causal (a lab teacher of issue 16)")
    device = next(teacher.parameters()).device
    if selection_budget is not None and (device.type != "cuda" or not 0 < selection_budget <= 1):
        raise ValueError("sparsa.ruler: a selection budget is a fraction in (0, 1] measured against cuDNN at a model's shape: "
                         f"CUDA only (got {selection_budget} on {device})")
    dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    teacher.eval()
    runner = _Runner(teacher, n, block, dtype)
    blocks, heads, layers = runner.blocks, teacher.model["heads"], teacher.model["layers"]
    say = progress or (lambda line: None)
    started = time.perf_counter()
    validation = lab.task_batch(teacher.task, "validation", 0, validation_inputs, n=n)
    notes = []

    methods = []
    methods.append(_Method("diagonal", 1.0 / blocks, "the own block alone (band(0))", keep=1,
                           scores=lambda l, q, k: torch.zeros(q.shape[0], q.shape[1], blocks, blocks, device=q.device)))
    gate, gate_label = None, ""
    if pooled_gate_inputs > 0:
        t0 = time.perf_counter()
        configs = [(c + (None, None, None))[:5] for c in (pooled_gate_configs or [(pooled_gate_width, "mean")])]
        configs = [(width, key_pool, inputs or pooled_gate_inputs, target or "sum", query or "mean")
                   for width, key_pool, inputs, target, query in configs]
        if selection_budget is not None:   # the cost bar first: configurations whose selection costs too much are not chosen
            density0 = densities[0] if densities else 1.0
            configs, lines = _within_budget(configs, selection_budget, lambda c: _selection_share(n, block, density0, c[0], c[1], c[4],
                                                                                                 device, time_repeats))
            for line in lines:
                notes.append(line)
                say(line)
        most = max(c[2] for c in configs)   # one training set; a config with fewer takes its first ones
        targets = tuple(sorted({c[3] for c in configs}))
        rows = any(c[4] == "rows" for c in configs)
        train = lab.task_batch(teacher.task, "train", 2 ** 40, most, seed=seed, n=n)
        train_ex, validation_ex = (_gate_examples(runner, x, batch, targets, rows) for x in (train, validation))
        keep0 = blocks_per_row(densities[0], blocks) if densities else blocks
        best = None
        for width, key_pool, inputs, target, query in configs:
            g = PooledGate(layers, heads, teacher.model["head_width"], width, block, True, seed, device, key_pool, query)
            d = teacher.model["head_width"] * (1 if key_pool == "mean" else 3)
            keys = lambda ex, m=None: (ex[3 if query == "rows" else 0][:m], ex[1][:m, ..., :d], ex[2][target][:m])   # noqa: E731  ("mean" reads the first d columns)
            r = g.train(keys(train_ex, inputs), keys(validation_ex), steps=pooled_gate_steps)
            label = (f"width {width}, keys {key_pool}" + (f", {inputs} training sequences" if inputs != pooled_gate_inputs else "") +
                     (f", target {target}" if target != "sum" else "") + (", queries row by row" if query == "rows" else ""))
            line = (f"pooled gate ({label}): trained on {inputs} training-stream sequences (seed {seed}, from index "
                    f"2^40) for at most {pooled_gate_steps} steps (the longest head ran {r['steps']}): KL on them "
                    f"{r['first_train']:.4f} -> {r['last_train']:.4f}; validation KL {r['first_validation']:.4f} -> "
                    f"{r['best_validation']:.4f} (best, kept)")
            if len(configs) > 1:   # the configuration: the most accurate on validation at the first density
                acc = _accuracy(runner, _Method("pooled gate", densities[0] if densities else 1.0, "", keep=keep0,
                                                scores=g.block_scores, select=g.top_k), validation, batch)
                line += f"; validation accuracy at {100 * (densities[0] if densities else 1.0):.2f}% {100 * acc:.2f}%"
                if best is None or acc > best[0]:
                    best = (acc, g, label)
            else:
                best = (None, g, label)
            notes.append(line)
            say(line)
        gate, gate_label = best[1], best[2]
        notes.append(f"pooled gate: {gate_label}" + (" (chosen on validation)" if len(configs) > 1 else "") +
                     f"; training {time.perf_counter() - t0:.1f} s in all")
    indexer = None
    if indexer_inputs > 0:
        t0 = time.perf_counter()
        indexer = Indexer(layers, heads, teacher.model["head_width"], indexer_heads, indexer_width, block, True, seed, device)
        train = lab.task_batch(teacher.task, "train", 2 ** 40, indexer_inputs, seed=seed, n=n)
        r = indexer.train(_indexer_examples(runner, train, batch, indexer_rows), _indexer_examples(runner, validation, batch, indexer_rows),
                          steps=indexer_steps)
        notes.append(f"indexer: {indexer_heads} index heads of width {indexer_width}, trained on {indexer_rows} query rows of each of "
                     f"{indexer_inputs} training-stream sequences (seed {seed}, from index 2^40) for at most {indexer_steps} steps (the "
                     f"longest layer ran {r['steps']}): KL on them {r['first_train']:.4f} -> {r['last_train']:.4f}; validation KL "
                     f"{r['first_validation']:.4f} -> {r['best_validation']:.4f} (best, kept) in {time.perf_counter() - t0:.1f} s")
        say(notes[-1])
    for target in densities:
        keep = blocks_per_row(target, blocks)
        per_row = f"{keep} block{'s' if keep != 1 else ''} per row"
        methods.append(_Method("identity gate", target, per_row + ", the diagonal then the top blocks by exact q.k scores "
                               "(untrained, costs a dense q k^T)", keep=keep, scores=lambda l, q, k: exact_scores(q, k, block)))
        # the best fixed pattern: the most accurate on validation among the candidates that fit
        pool = [(e, m, d) for e, m, d in sparsa.learn.fixed_candidates(n, heads, block, True)]
        for name in ("longformer", "bigbird"):
            e = sparsa.learn.baseline_expression(name, target, n, block)
            pool.append((e, *sparsa.learn.fixed_set(e, n, heads, block, True)))
        fitting = [c for c in pool if c[2] <= target + 1e-9] or [min(pool, key=lambda c: c[2])]
        best = None
        for e, m, d in fitting:
            acc = _accuracy(runner, _Method("fixed", target, e, fixed=m, density=d), validation, batch)
            if best is None or acc > best[0] or (acc == best[0] and d < best[3]):
                best = (acc, e, m, d)
        methods.append(_Method("best fixed", target, f"{best[1]} (validation accuracy {100 * best[0]:.2f}%)",
                               fixed=best[2], density=best[3]))
        if "moba" not in skip:
            methods.append(_Method("moba", target, per_row + ", the diagonal then the top blocks by mean query . mean key",
                                   keep=keep, scores=lambda l, q, k: moba_scores(q, k, block)))
        if "quest" not in skip:
            methods.append(_Method("quest", target, per_row + ", the diagonal then the top blocks by Quest's bound "
                                   "(the largest over the block's queries)", keep=keep, scores=lambda l, q, k: quest_scores(q, k, block)))
        if "vertical-slash" not in skip:
            methods.append(_Method("vertical-slash", target, per_row + ", the diagonal then the top columns and diagonals of the last "
                                   "64 queries' attention", keep=keep, scores=lambda l, q, k: vertical_slash_scores(q, k, block)))
        if "duo" not in skip:
            methods.append(_duo_method(runner, validation, batch, n, layers, heads, target, block))
        if families:   # window, Longformer, BigBird: the largest of each family within the density
            for name, detail, masks, density in sparsa.learn.fixed_families(n, heads, target, block, True):
                methods.append(_Method(name, target, detail, fixed=masks, density=density))
        if gate is not None:
            methods.append(_Method("pooled gate", target, per_row + f", the diagonal then the top blocks by the trained pooled "
                                   f"gate ({gate_label}; its training below)",
                                   keep=keep, scores=gate.block_scores, select=gate.top_k))
        if indexer is not None:
            methods.append(_Method("indexer", target, per_row + f" (the same in every head of a layer), the diagonal then the blocks "
                                   f"of most mass in the trained indexer's prediction ({indexer_heads} index heads of width "
                                   f"{indexer_width}; its training below)", keep=keep, scores=indexer.block_scores))
    if families and "search" not in skip and search_inputs > 0 and densities:   # the search's static script
        methods += _search_methods(runner, n, layers, heads, block, seed, densities, search_inputs, notes)
        say(notes[-1])
    if families and densities:   # the content families at every density, each chosen on validation
        for family in ("lsh", "anchors"):
            if family in skip:
                continue
            t0 = time.perf_counter()
            folder = None
            if family == "lsh":
                grid = [_lsh_masks(n, layers, heads, block, chunk, rounds) for chunk in _content_chunks(n) for rounds in LSH_ROUNDS]
                source = "rotations from seed 0"
            else:
                folder = tempfile.TemporaryDirectory(prefix="sparsa-ruler-anchors-")   # the anchors files, as long as the rows
                grid, note = _anchor_grid(runner, n, layers, heads, block, seed, folder.name)
                notes.append(note)
                say(note)
                source = "anchors fitted on the training stream"
            methods += _content_methods(family, grid, source, runner, validation, batch, n, layers, heads, densities, notes, folder)
            say(f"{family}: {len(densities)} row{'s' if len(densities) != 1 else ''} chosen on validation in "
                f"{time.perf_counter() - t0:.1f} s")
    if families and densities:   # once, after the rows per density, as the C++ evaluation adds ruler_favor
        methods.append(_favor_method(layers, heads, teacher.model["head_width"], favor_features, device))
    say(f"{len(methods)} rows chosen and trained in {time.perf_counter() - started:.1f} s; the test stream next")

    rows = [{"method": "dense", "target": 1.0, "detail": "the causal mask", "hits": [], "kinds": [], "depths": [], "density": []}]
    rows += [{"method": m.name, "target": m.target, "detail": m.detail, "hits": [], "kinds": [], "depths": [], "density": []} for m in methods]
    t0 = time.perf_counter()
    for first in range(0, test_inputs, batch):
        count = min(batch, test_inputs - first)
        data = lab.task_batch(teacher.task, "test", first, count, n=n)
        tokens = torch.from_numpy(data["tokens"])
        for row, method in zip(rows, [None] + methods):
            logits, density = runner.logits(tokens, method)
            hit, kind, depth = _score(logits, data)
            row["hits"].append(hit)
            row["kinds"].append(kind)
            row["depths"].append(depth)
            row["density"].append(None if density is None else density * count)
        if progress and ((first + count) % max(batch, 100 // batch * batch) == 0 or first + count == test_inputs):
            say(f"{first + count} of {test_inputs} test sequences through {len(rows)} rows ({time.perf_counter() - t0:.0f} s)")
    kinds = sparsa.learn.task_kinds()
    for row in rows:
        hit, kind, depth = (np.concatenate(row.pop(key)) for key in ("hits", "kinds", "depths"))
        row["answers"] = int(hit.size)
        row["accuracy"] = float(hit.mean()) if hit.size else 0.0
        row["by_kind"] = {kinds[k]: {"accuracy": float(hit[kind == k].mean()), "answers": int((kind == k).sum())}
                          for k in np.unique(kind)}
        row["by_depth"] = {}
        for k in np.unique(kind):
            if kinds[k] == "mqar":
                continue
            at = kind == k
            row["by_depth"][kinds[k]] = [float(hit[at & (depth == b)].mean()) if (at & (depth == b)).any() else None for b in range(10)]
        needle = np.isin(kind, [i for i, name in enumerate(kinds) if name != "mqar"])
        row["needle_by_depth"] = [float(hit[needle & (depth == b)].mean()) if (needle & (depth == b)).any() else None for b in range(10)]
        row["density"] = None if None in row["density"] else sum(row["density"]) / test_inputs
    timing = _timings(runner, methods, rows, time_repeats, gate)
    return {"n": n, "block": block, "blocks": blocks, "test_inputs": test_inputs, "validation_inputs": validation_inputs,
            "dtype": dtype, "device": str(device), "rows": rows, "notes": notes, "timing": timing,
            "seconds": time.perf_counter() - started}


def _graph_ms(fn, device, repeats):
    """Median ms of fn() replayed as one CUDA graph (captured after two warm-up calls on a side
    stream, as torch.cuda.graphs asks): what a serving loop pays for it with no Python or launch
    overhead. (None, why) where the capture fails."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return _time_ms(graph.replay, device, repeats), None
    except RuntimeError as e:
        return None, str(e).splitlines()[0][:200]


def _selection_times(select, attend, device, repeats, host_masks=None):
    """select() -> top; attend(top) -> o. Median ms of the selection (scores and top-k on the device),
    of the sparse attention under its blocks (on CUDA with the blocks written on the device: no host
    step; elsewhere masks made on the host, host_masks(top) -> MaskSet, timed apart) and, on CUDA,
    of both together as one CUDA graph, and of the selection alone as one (select_graph_ms)."""
    top = select()
    out = {"select_ms": _time_ms(select, device, repeats), "masks_ms": 0.0}
    if host_masks is not None:
        out["masks_ms"] = _time_ms(lambda: host_masks(top), device, repeats)
    out["attention_ms"] = _time_ms(lambda: attend(top), device, repeats)
    if torch.device(device).type == "cuda":
        out["graph_ms"], error = _graph_ms(lambda: attend(select()), device, repeats)
        if error:
            out["graph_error"] = error
        else:   # the selection alone as a graph: its share of the dense time without Python's launches
            out["select_graph_ms"], _ = _graph_ms(select, device, repeats)
    return out


def time_at_shape(n, heads=16, head_dim=128, block=64, density=0.125, width=32, device="cuda", repeats=11, seed=0,
                  key_pool="mean", query_pool="mean"):
    """The cost side at a model's shape rather than the lab teacher's: random bfloat16 (CUDA) or
    float32 q, k, v [1, heads, n, head_dim], an untrained pooled gate of that shape and key and query pools (its
    cost does not depend on its weights) choosing blocks_per_row(density) blocks a row
    (PooledGate.top_k); median ms of its selection on the device, of sparsa's attention
    under its blocks (sparsa.torch.attention_top_k on CUDA), of both as one CUDA graph, of sparsa's
    dense causal attention and, on CUDA, of SDPA's cuDNN backend (causal)."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, head_dim, device=device, dtype=dtype, generator=g) for _ in range(3))
    blocks = (n + block - 1) // block
    keep = blocks_per_row(density, blocks)
    gate = PooledGate(1, heads, head_dim, width, block, True, seed, device, key_pool, query_pool)
    out = {"shape": [1, heads, n, head_dim], "block": block, "keep": keep, "width": width, "key_pool": key_pool,
           "query_pool": query_pool}
    with torch.no_grad():
        out.update(_selection_times(lambda: gate.top_k(0, q, k, keep),
                                    lambda top: sparsa_torch.attention_top_k(q, k, v, top, block), device, repeats))
        causal = sparsa.learn.causal_masks(n, heads, block)
        out["dense_ms"] = _time_ms(lambda: sparsa_torch.attention(q, k, v, causal, 0), device, repeats)
        if device.type == "cuda" and hasattr(torch.nn, "attention") and hasattr(torch.nn.attention, "SDPBackend"):
            from torch.nn.attention import SDPBackend, sdpa_kernel
            try:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    out["cudnn_ms"] = _time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device, repeats)
            except RuntimeError as e:
                out["cudnn_error"] = str(e).splitlines()[0][:200]
    return out


def _timings(runner, methods, rows, repeats, gate=None):
    """One layer (layer 0) of the first test sequence: the dense attention (the teacher's, and on
    CUDA SDPA's cuDNN backend where torch has it), and for each row its selection, its sparse
    attention and both as one CUDA graph (_selection_times), or a fixed row's attention, or a row
    without a mask its attention (and on CUDA as one CUDA graph). On CUDA also time_at_shape, with the
    trained gate's width and key pool when there is one."""
    t, device = runner.t, runner.device
    data = lab.task_batch(t.task, "test", 0, 1, n=runner.n)
    captured = {}

    def capture(layer, q, k, v):
        if layer == 0:
            captured.update(q=q, k=k, v=v)
        return t._attend(q, k, v)

    with torch.no_grad(), lab._autocast(device, runner.dtype):
        t(torch.from_numpy(data["tokens"]).to(device), attend=capture)
    q, k, v = captured["q"], captured["k"], captured["v"]
    heads = q.shape[1]
    kq = _kv_per_query_head(k, heads)
    out = {"shape": list(q.shape), "kv_heads": int(k.shape[1]), "repeats": repeats}
    causal = t.masks(runner.n)
    with torch.no_grad():
        out["dense_ms"] = _time_ms(lambda: sparsa_torch.attention(q, k, v, causal, 0), device, repeats)
        if device.type == "cuda" and hasattr(torch.nn.attention, "SDPBackend"):
            from torch.nn.attention import SDPBackend, sdpa_kernel
            try:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    out["cudnn_ms"] = _time_ms(lambda: F.scaled_dot_product_attention(q, kq, _kv_per_query_head(v, heads), is_causal=True),
                                               device, repeats)
            except RuntimeError as e:
                out["cudnn_error"] = str(e).splitlines()[0][:200]
        per = {}
        vq = _kv_per_query_head(v, heads)
        for m in methods:
            key = f"{m.name} {m.target}"
            if m.times is not None:   # a row that times itself (LSH: its engine's own split)
                per[key] = m.times(q, kq, vq, repeats)
                continue
            if m.attention is not None:   # no mask: its pass alone (the C++ times favor_forward so, select 0)
                per[key] = {"select_ms": 0.0, "masks_ms": 0.0,
                            "attention_ms": _time_ms(lambda m=m: m.attention(0, q, kq, vq), device, repeats)}
                if device.type == "cuda":
                    per[key]["graph_ms"], error = _graph_ms(lambda m=m: m.attention(0, q, kq, vq), device, repeats)
                    if error:
                        per[key]["graph_error"] = error
                continue
            if m.fixed is not None:
                fixed = m.fixed[0] if isinstance(m.fixed, list) else m.fixed   # layer 0's
                per[key] = {"select_ms": 0.0, "masks_ms": 0.0,
                            "attention_ms": _time_ms(lambda fixed=fixed: sparsa_torch.attention(q, k, v, fixed, 0), device, repeats)}
                continue
            host = None
            if device.type != "cuda":
                host = lambda top: sparsa_torch.top_k_masks(top.top, runner.n, runner.block)   # noqa: E731  (a TopK)
            per[key] = _selection_times(lambda m=m: m.top(0, q, kq), lambda top: runner.attend_top(q, k, v, top), device, repeats, host)
        out["methods"] = per
    if device.type == "cuda":   # the same selection at a model's shape (16 heads of width 128)
        masked = [m.target for m in methods if m.attention is None]   # FAVOR+'s target is no density
        shaped = {"width": gate.width, "key_pool": gate.key_pool, "query_pool": gate.query_pool} if gate is not None else {}
        out["at_shape"] = time_at_shape(runner.n, block=runner.block, density=max(masked, default=0.125), device=device,
                                        repeats=repeats, **shaped)
    return out


def evaluate(teachers, n, labels=None, progress=print, **options):
    """evaluate_teacher for each teacher (their shapes must agree); returns {"n", "block", ...,
    "teachers": [labels], "evals": [one dict per teacher]}."""
    labels = labels or [f"teacher {i + 1}" for i in range(len(teachers))]
    evals = []
    for label, t in zip(labels, teachers):
        say = (lambda line, label=label: progress(f"{label}: {line}")) if progress else None
        evals.append(evaluate_teacher(t, n, progress=say, **options))
    return {"n": n, "teachers": labels, "evals": evals}


def main(argv=None):
    """python3 -m sparsa.ruler --teachers A.bin,B.bin --n N [options] -o DIR
    python3 -m sparsa.ruler --merge DIR1,DIR2 -o DIR"""
    import argparse
    import shlex
    import sys
    ap = argparse.ArgumentParser(prog="python3 -m sparsa.ruler", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", help="teacher checkpoints, comma-separated (sparsa learn teacher or sparsa.lab)")
    ap.add_argument("--n", type=int, help="the length to measure at (any; the teachers' own need not be it)")
    ap.add_argument("--merge", help="instead of measuring: folders of earlier runs (report.json each), comma-separated, made the "
                                    "same way on different teachers, written as one report to -o (a long run split over calls)")
    ap.add_argument("--densities", default="0.125", help="block densities, comma-separated (0.125)")
    ap.add_argument("--block", type=int, default=64, help="block size (64: the CUDA kernels' tiles; the C++ evaluation uses 16)")
    ap.add_argument("--test-inputs", type=int, default=100)
    ap.add_argument("--validation-inputs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="test sequences per forward")
    ap.add_argument("--pooled-gate-inputs", type=int, default=64, help="training-stream sequences the pooled gate learns from (0: none)")
    ap.add_argument("--pooled-gate-width", type=int, default=32)
    ap.add_argument("--pooled-gate-steps", type=int, default=400)
    ap.add_argument("--pooled-gate-configs", default="",
                    help="several gates to choose from on validation, e.g. 32:mean,64:mean,32:mean+max+min:256:max:rows "
                         "(WIDTH:KEYS[:SEQUENCES][:TARGET][:rows]: the gate's training sequences, default --pooled-gate-inputs, "
                         "its KL target, sum (each block's attention mass, default) or max (its largest row share, "
                         "the exact selector's rule), and rows: each query row scored, not the block's mean; default: "
                         "--pooled-gate-width with mean keys, as the C++ gate)")
    ap.add_argument("--indexer-inputs", type=int, default=64, help="training-stream sequences the lightning indexer learns from (0: none)")
    ap.add_argument("--indexer-heads", type=int, default=2)
    ap.add_argument("--indexer-width", type=int, default=8)
    ap.add_argument("--indexer-steps", type=int, default=300)
    ap.add_argument("--families", choices=["fixed", "none"], default="fixed",
                    help="fixed: window, Longformer, BigBird, the search script, LSH and anchors rows at each density too, and FAVOR+ "
                         "once (default); none: the selectors only")
    ap.add_argument("--skip", default="", help="rows to leave out, comma-separated, of " + ", ".join(SKIPPABLE) +
                    " (families: window, Longformer, BigBird, the search script, LSH, anchors and FAVOR+); dense, the diagonal, "
                    "the identity gate, the best fixed pattern always run (and the pooled gate, unless --pooled-gate-inputs 0)")
    ap.add_argument("--favor-features", type=int, default=256, help="FAVOR+'s random features per head (256, seed 0)")
    ap.add_argument("--selection-budget", type=float, default=None,
                    help="CUDA: leave out the gate configurations whose selection at a model's shape (16 heads of width 128, one "
                         "CUDA graph) takes more than this share of cuDNN's dense time, e.g. 0.2 (issue 16's bar)")
    ap.add_argument("--search-inputs", type=int, default=4,
                    help="training-stream sequences the search script's recall is measured on (0: no search script row)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="bfloat16 on CUDA by default, else float32")
    ap.add_argument("-o", "--out", required=True, help="the folder for report.md and report.json")
    a = ap.parse_args(argv)
    if a.merge:
        if a.teachers:
            ap.error("--merge takes the teachers from the reports: give no --teachers")
        parts = []
        for folder in [x for x in a.merge.split(",") if x]:
            try:
                with open(os.path.join(folder, "report.json")) as f:
                    parts.append(json.load(f))
            except (OSError, ValueError) as e:
                sys.exit(f"sparsa.ruler: --merge {folder}: cannot read its report.json ({e})")
        try:
            report = merge(parts)
        except ValueError as e:
            sys.exit(str(e))
        for r in report_write(report, a.out):
            print(f"{r['method']:>14} {_target_line(r)}  accuracy {_pm(r['accuracy'])}%  answers {r['answers']}")
        print(f"wrote {a.out}/report.md and report.json ({len(report['teachers'])} teachers from {len(parts)} runs)")
        return
    if not a.teachers or a.n is None:
        ap.error("--teachers and --n are required (or --merge)")
    if a.favor_features < 1:
        ap.error(f"--favor-features {a.favor_features}: give at least 1 feature per head")
    if a.selection_budget is not None and (not a.device.startswith("cuda") or not 0 < a.selection_budget <= 1):
        ap.error(f"--selection-budget {a.selection_budget}: a fraction in (0, 1], measured against cuDNN: CUDA only "
                 f"(--device {a.device})")
    if a.search_inputs < 0:
        ap.error(f"--search-inputs {a.search_inputs}: give 0 (no search script) or more")
    try:
        densities = [float(x) for x in a.densities.split(",") if x]
    except ValueError:
        ap.error(f"--densities {a.densities!r}: expected numbers in (0, 1] separated by commas")
    if not densities or any(not 0 < x <= 1 for x in densities):
        ap.error(f"--densities {a.densities!r}: expected numbers in (0, 1] separated by commas")
    skip = [x for x in a.skip.split(",") if x]
    if set(skip) - set(SKIPPABLE):
        ap.error(f"--skip {a.skip!r}: rows that can be left out are {', '.join(SKIPPABLE)}")
    configs = None
    if a.pooled_gate_configs:
        configs = []
        for item in a.pooled_gate_configs.split(","):
            parts = item.split(":")
            width, pool, rest = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
            inputs = [x for x in rest if x.isdigit()]
            target = [x for x in rest if x in TARGETS]
            query = [x for x in rest if x == "rows"]
            kinds = [0 if x.isdigit() else 1 if x in TARGETS else 2 if x == "rows" else 3 for x in rest]
            if not width.isdigit() or int(width) < 1 or pool not in KEY_POOLS or 3 in kinds or kinds != sorted(set(kinds)) \
                    or (inputs and int(inputs[0]) < 1):
                ap.error(f"--pooled-gate-configs: {item!r} is not WIDTH:KEYS[:SEQUENCES][:TARGET][:rows] with KEYS one of "
                         f"{', '.join(KEY_POOLS)}, SEQUENCES at least 1 and TARGET one of {', '.join(TARGETS)}")
            configs.append((int(width), pool, int(inputs[0]) if inputs else None, target[0] if target else None,
                            query[0] if query else None))
    paths = [p for p in a.teachers.split(",") if p]
    teachers = []
    for p in paths:
        try:
            teachers.append(lab.LabTeacher.load(p, attention="sparsa").to(a.device))
        except (OSError, sparsa.Error, ValueError) as e:
            sys.exit(f"sparsa.ruler: {e}")
    shapes = {(t.model["layers"], t.model["heads"], t.model["head_width"]) for t in teachers}
    if len(shapes) > 1:
        sys.exit(f"sparsa.ruler: the teachers differ in shape (layers, heads, head width): {sorted(shapes)}")
    seeds = []
    for p in paths:   # a teacher's training seed: the pooled gate learns from that seed's training stream
        digits = "".join(ch if ch.isdigit() else " " for ch in os.path.basename(p)).split()
        seeds.append(int(digits[-1]) if digits else 1)
    started = time.perf_counter()
    command = "python3 -m sparsa.ruler " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    labels = [os.path.basename(p) for p in paths]
    evals = []
    for i, (p, t, s) in enumerate(zip(paths, teachers, seeds)):
        label = labels[i]
        print(f"{label}: trained at n = {t.task['n']}, measured at n = {a.n}", flush=True)
        evals.append(evaluate_teacher(t, a.n, densities=densities, block=a.block, test_inputs=a.test_inputs,
                                      validation_inputs=a.validation_inputs, batch=a.batch, pooled_gate_inputs=a.pooled_gate_inputs,
                                      pooled_gate_width=a.pooled_gate_width, pooled_gate_steps=a.pooled_gate_steps,
                                      pooled_gate_configs=configs, seed=s, families=a.families == "fixed", search_inputs=a.search_inputs,
                                      selection_budget=a.selection_budget,
                                      favor_features=a.favor_features, skip=skip,
                                      indexer_inputs=a.indexer_inputs, indexer_heads=a.indexer_heads, indexer_width=a.indexer_width,
                                      indexer_steps=a.indexer_steps,
                                      dtype=a.dtype, progress=lambda line, label=label: print(f"{label}: {line}", flush=True)))
        # after every teacher, so that a run cut short keeps the teachers it finished
        report = {"n": a.n, "teachers": labels[:i + 1], "evals": evals, "commands": [command], "pending": labels[i + 1:]}
        rows = report_write(report, a.out)
    for r in rows:
        print(f"{r['method']:>14} {_target_line(r)}  accuracy {_pm(r['accuracy'])}%  answers {r['answers']}")
    print(f"wrote {a.out}/report.md and report.json ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
