"""sparsa.ruler_families: the rows of sparsa.ruler that are families rather than selectors, as the C++
evaluation's learn/ruler_families.cpp makes them: FAVOR+ in place of every layer's attention, the
search's static script, and the content families LSH and anchors, each chosen on the validation
stream by its pairs kept. (Window, Longformer and BigBird come from sparsa.learn.fixed_families,
the C++ code itself.)

Index: FAVOR+, the content families' grids (LSH, anchors), the search script, a content family
chosen on validation.
"""

import os
import time

import numpy as np
import torch

import sparsa
import sparsa.lab as lab
import sparsa.torch as sparsa_torch
from sparsa.ruler_run import _Method, _accuracy, _dense_layers, _time_ms
from sparsa.selectors import favor_attention


def _favor_method(layers, heads, head_width, features, device):
    """FAVOR+ as a row (learn/ruler_families.cpp, ruler_favor): every (layer, head) its `features`
    random features, drawn once as favor(features) draws them (seed 0, draw 0), causal prefix sums,
    in place of each layer's attention."""
    draw = lambda layer: np.stack([sparsa.favor_features(0, layer, h, features, head_width) for h in range(heads)])  # noqa: E731
    omega = [torch.from_numpy(draw(layer)).to(device) for layer in range(layers)]   # [heads, features, head_width] per layer
    detail = (f"Performer's FAVOR+, {features} positive orthogonal random features per head (seed 0, as the script's "
              f"favor({features}) draws them), causal prefix sums: no mask, its estimate in place of every layer's attention "
              "(timed: its whole pass, as sparse attention)")
    return _Method("favor+", 1.0, detail, attention=lambda layer, q, k, v: favor_attention(q, k, v, omega[layer]))


# The content families' grids, as learn/ruler_families.cpp's: chunks (LSH: n / chunk buckets and 1, 2
# or 4 rounds; anchors: n / chunk anchors, one round). Chunks that would give more than
# CONTENT_MAX_BUCKETS buckets are left out (at 16,384 chunks of 8 and 16: 2,048 and 1,024 buckets,
# hashing's n x d x buckets / 2 products a round and head, at densities under 1%).
CONTENT_CHUNKS, LSH_ROUNDS, CONTENT_MAX_BUCKETS = (8, 16, 32, 64, 128), (1, 2, 4), 512
# Beyond the C++ grid, which stops at 128 and so at 16,384 keeps at most 6% of the causal pairs (LSH,
# 4 rounds; anchors, one round, 1.6%): larger chunks, doubling, while n / chunk leaves at least
# CONTENT_MIN_BUCKETS_SCALED buckets (at 4,096: 256; at 16,384: 256 to 1,024), so that a long sequence's
# grid reaches the densities a short one's does.
CONTENT_MIN_BUCKETS_SCALED = 16
ANCHOR_FIT_INPUTS, ANCHOR_ITERATIONS = 8, 10   # the C++ evaluation's ContentFamilyOptions
# The validation sequences whose pairs give a content candidate's density (the first ones): counting
# is on the CPU (sparsa.content_report), 0.6 s a sequence, layer and candidate at 16,384 on 2 cores,
# and a candidate's density barely moves between sequences; the accuracy uses every one.
CONTENT_COUNT_INPUTS = 4


def _content_chunks(n):
    """The grid's chunks at length n: CONTENT_CHUNKS (at most CONTENT_MAX_BUCKETS buckets, at least 2),
    then 256, 512, ... while n / chunk >= CONTENT_MIN_BUCKETS_SCALED."""
    chunks = [c for c in CONTENT_CHUNKS if c <= n // 2 and n // c <= CONTENT_MAX_BUCKETS]
    c = 2 * CONTENT_CHUNKS[-1]
    while n // c >= CONTENT_MIN_BUCKETS_SCALED:
        chunks.append(c)
        c *= 2
    return chunks


def _content_script(layers, heads, expression):
    """A MaskSet's script: `expression` (a format string of l and h) in every layer and head, causal."""
    lines = [f"layers {layers}", f"heads {heads}", "causal", "attend = " + expression.format(l=0, h=0)]
    lines += [f"attend[layer {l}, head {h}] = " + expression.format(l=l, h=h)
              for l in range(layers) for h in range(heads) if expression.format(l=l, h=h) != expression.format(l=0, h=0)]
    return "\n".join(lines)


def _lsh_masks(n, layers, heads, block, chunk, rounds):
    """(expression, MaskSet) of lsh(n / chunk buckets, rounds, chunk, shared_qk = false), causal, in
    every layer and head (rotations from seed 0, per layer and head as the engines draw them)."""
    buckets = max(2, n // chunk // 2 * 2)
    expression = f"lsh({buckets}, rounds = {rounds}, chunk = {chunk}, shared_qk = false)"
    return expression, sparsa.compile(_content_script(layers, heads, expression), n=n, block=block)


def _anchor_grid(runner, n, layers, heads, block, seed, folder):
    """[(expression, MaskSet)] of anchors(n / chunk, 1, chunk, shared_qk = false), causal, for each
    chunk: every (layer, head) its own anchors, fitted (sparsa.anchors_fit: spherical k-means,
    ANCHOR_ITERATIONS rounds) on the q and k rows of that head over ANCHOR_FIT_INPUTS training-stream
    sequences of `seed` (from index 2^40, as the C++ evaluation fits them), written to `folder` (the
    MaskSets read them on each call: keep it). Returns (grid, note)."""
    t0 = time.perf_counter()
    train = lab.task_batch(runner.t.task, "train", 2 ** 40, ANCHOR_FIT_INPUTS, seed=seed, n=n)
    rows = {}   # (layer, head) -> ([q rows], [k rows])

    def collect(first, layer, q, k):
        qa, ka = q.detach().float().cpu().numpy(), k.detach().float().cpu().numpy()
        for h in range(heads):
            side = rows.setdefault((layer, h), ([], []))
            side[0].append(qa[:, h].reshape(-1, qa.shape[-1]))
            side[1].append(ka[:, h].reshape(-1, ka.shape[-1]))

    _dense_layers(runner, train, ANCHOR_FIT_INPUTS, collect)
    grid, cosines = [], []
    for chunk in _content_chunks(n):
        k = max(1, n // chunk)
        for (l, h), (qs, ks) in sorted(rows.items()):
            cosines.append(sparsa.anchors_fit(np.concatenate(qs), np.concatenate(ks), k, os.path.join(folder, f"L{l}H{h}-k{k}.npz"),
                                              seed=seed, iterations=ANCHOR_ITERATIONS))
        path = os.path.join(folder, "L{l}H{h}-k" + str(k) + ".npz")
        expression = f"anchors({k}, 1, chunk = {chunk}, fit = \"{path}\", shared_qk = false)"
        grid.append((f"anchors({k}, 1, {chunk}, shared_qk = false)", sparsa.compile(_content_script(layers, heads, expression), n=n,
                                                                                     block=block)))
    note = (f"anchors: k = n / chunk per layer and head, fitted (spherical k-means, {ANCHOR_ITERATIONS} iterations) on the q and k "
            f"rows of {ANCHOR_FIT_INPUTS} training-stream sequences (seed {seed}, from index 2^40) in {time.perf_counter() - t0:.1f} s; "
            f"mean cosine to the anchor {min(cosines):.3f} to {max(cosines):.3f}")
    return grid, note


def _search_recall(qs, ks, n, block):
    """recall [candidates, layers, heads] of sparsa.learn.search_candidates(n, block, heads, causal)
    on a causal model's q and k (qs[l], ks[l]: [inputs, heads, n, d] torch tensors of layer l, k per
    query head): each candidate's share of the causal dense attention kept, mean over query rows and
    inputs, as the C++ search table measures it (learn::mask_recall: exp(lse_mask - lse_dense) a row)
    but with sparsa.torch's engine on the tensors' device: on CUDA the tensor-core kernels in
    bfloat16 (float32 inputs rounded to it; not yet timed there: the CPU table it replaces took
    160.6 s at 16,384 on the H100 machine); on the CPU the CPU engine in float32."""
    heads = qs[0].shape[1]
    candidates = sparsa.learn.search_candidates(n, block, heads, True)
    dense = sparsa.compile(f"heads {heads}\ncausal\nattend = dense", n=n, block=block)
    recall = np.zeros((len(candidates), len(qs), heads))
    with torch.no_grad():
        for l, (q, k) in enumerate(zip(qs, ks)):
            if q.device.type == "cuda" and q.dtype == torch.float32:
                q, k = q.to(torch.bfloat16), k.to(torch.bfloat16)
            elif q.device.type == "cpu":
                q, k = q.float(), k.float()

            def lse(masks):
                _, scale, _ = sparsa_torch._arguments_check(q, k, k, masks, 0, None, 0)
                return sparsa_torch._forward(q, k, k, masks, 0, scale, 0)[1].double()   # [inputs, heads, n]

            all_ = lse(dense)
            for c, (_, masks, _) in enumerate(candidates):
                recall[c, l] = torch.exp(lse(masks) - all_).clamp(max=1.0).mean(dim=(0, 2)).cpu().numpy()
    return candidates, recall


def _search_methods(runner, n, layers, heads, block, seed, targets, inputs, notes):
    """The search's static script at each target (learn/ruler_families.cpp, ruler_search_script):
    every candidate of the language's families measured by its recall on each (layer, head) of the
    dense teacher's causal attention over `inputs` training-stream sequences of `seed` (from index
    2^40: _search_recall, on the runner's device), then per head the candidate of most recall whose
    density after the causal cut is within the target (sparsa.learn.search_script). The same masks
    for every input."""
    t0 = time.perf_counter()
    train = lab.task_batch(runner.t.task, "train", 2 ** 40, inputs, seed=seed, n=n)
    parts = {}   # first -> [layer] -> (q, k) [batch, heads, n, d] on the runner's device
    _dense_layers(runner, train, inputs, lambda first, layer, q, k: parts.setdefault(first, []).append((q.detach(), k.detach())))
    qs = [torch.cat([parts[first][l][0] for first in sorted(parts)]) for l in range(layers)]
    ks = [torch.cat([parts[first][l][1] for first in sorted(parts)]) for l in range(layers)]
    candidates, recall = _search_recall(qs, ks, n, block)
    table = sparsa.learn.search_table_from_recall(recall, n, block, True)
    notes.append(f"search script: each head's recall of the search's {len(candidates)} candidates (causal) measured on {inputs} "
                 f"training-stream sequences (seed {seed}, from index 2^40) in {time.perf_counter() - t0:.1f} s")
    methods = []
    for target in targets:
        per_layer, density, detail = sparsa.learn.search_script(table, target, True)
        methods.append(_Method("search script", target, detail, fixed=list(per_layer), density=density))
    return methods


def _content_attention(masks):
    """A content row's attention of layer `layer`: sparsa.torch.attention on the content engines (on
    CUDA the CUDA content engine on the tensors' device memory)."""
    return lambda layer, q, k, v: sparsa_torch.attention(q, k, v, masks, layer)


def _content_times(masks, device):
    """Times one layer (layer 0) as the C++ evaluation times a content family: its hashing or anchor
    assignment, sort and chunk ids as the selection, its passes and merge as the attention. On CUDA
    the CUDA content engine's own device times (sparsa.content_attention_cuda, CUDA events: no host
    copies, no launch overhead, so also the row's one-graph columns); on the CPU the whole call as
    attention (the CPU engine's split is not exposed here; select 0)."""
    def times(q, k, v, repeats):
        arrays = [t.detach().float().cpu().numpy() for t in (q, k, v)]
        if device.type == "cuda":
            dtype = sparsa_torch._CUDA_DTYPE_NAMES.get(q.dtype, "bfloat16")
            _, _, t = sparsa.content_attention_cuda(*arrays, masks, 0, dtype=dtype, repeats=repeats)
            # device times (CUDA events) carry no launch overhead either: they stand beside the other
            # rows' one-graph times (select_graph_ms, graph_ms) as well as their eager ones
            return {"select_ms": t["bucketing_ms"], "masks_ms": 0.0, "attention_ms": t["attention_ms"] + t["merge_ms"],
                    "select_graph_ms": t["bucketing_ms"], "graph_ms": t["total_ms"], "engine": "CUDA content engine, device times"}
        return {"select_ms": 0.0, "masks_ms": 0.0,
                "attention_ms": _time_ms(lambda: sparsa.attention(*arrays, masks, 0), device, repeats),
                "engine": "CPU content engine, the whole call"}
    return times


def _content_methods(name, grid, source, runner, validation, batch, n, layers, heads, targets, notes, hold=None):
    """A content family at each target (learn/ruler_families.cpp's ruler_content_families): every
    candidate of `grid` ([(expression, MaskSet)]) gets its density on the first CONTENT_COUNT_INPUTS
    validation sequences (pairs the content engine allows / causal pairs, mean over them, layers and heads:
    sparsa.content_report on the dense teacher's q and k); at each target the most accurate on
    validation among those within it (ties to the denser), or the least dense where none is. One
    note per target with every candidate's density and accuracy. source: where its numbers come
    from, for the row's detail; hold: what the rows keep alive (the anchors' folder: their MaskSets
    read the files on each call)."""
    pairs = [0.0] * len(grid)
    causal_pairs = n * (n + 1) / 2

    def count(first, layer, q, k):
        qa, ka = q.detach().float().cpu().numpy(), k.detach().float().cpu().numpy()
        for i, (_, masks) in enumerate(grid):
            pairs[i] += sum(r["pairs"] for r in sparsa.content_report(qa, ka, masks, layer)) / causal_pairs

    t0 = time.perf_counter()
    counted = min(CONTENT_COUNT_INPUTS, validation["tokens"].shape[0])
    _dense_layers(runner, {"tokens": validation["tokens"][:counted]}, batch, count)
    counted_s, t0 = time.perf_counter() - t0, time.perf_counter()
    seen = counted * layers * heads
    density = [p / seen for p in pairs]
    accuracy = {}
    methods = []
    for target in targets:
        fitting = [i for i in range(len(grid)) if density[i] <= target + 1e-9]
        for i in fitting:
            if i not in accuracy:
                accuracy[i] = _accuracy(runner, _Method(name, target, grid[i][0], attention=_content_attention(grid[i][1]),
                                                        density=density[i]), validation, batch)
        best = max(fitting, key=lambda i: (accuracy[i], density[i])) if fitting else min(range(len(grid)), key=density.__getitem__)
        tried = ", ".join(f"{grid[i][0]} {density[i]:.4f} {100 * accuracy[i]:.2f}%" for i in fitting)
        notes.append(f"{name} at {100 * target:g}%: " + (f"validation density and accuracy of each candidate within it: {tried}; chosen "
                                                          if fitting else "no candidate within the density on validation; the least "
                                                          "dense, ") + grid[best][0])
        methods.append(_Method(name, target, f"{grid[best][0]}, causal, chosen on validation ({source}; density: pairs kept / causal "
                               f"pairs on {counted} validation sequences, {100 * density[best]:.2f}%)",
                               attention=_content_attention(grid[best][1]), density=density[best],
                               times=_content_times(grid[best][1], runner.device)))
        methods[-1].hold = hold
    notes.append(f"{name}: the pairs of {len(grid)} candidates counted on {counted} validation sequences in "
                 f"{counted_s:.1f} s (sparsa.content_report, CPU), the validation accuracy of {len(accuracy)} of them on "
                 f"{validation['tokens'].shape[0]} in "
                 f"{time.perf_counter() - t0:.1f} s")
    return methods
