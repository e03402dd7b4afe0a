"""sparsa.ruler_run: a lab teacher run under one row of the RULER-style evaluation (sparsa.ruler):
the row itself (_Method: fixed masks, block scores and a top-k, or an attention in place of the
layer's), the runner that puts a row's attention into every layer of the teacher (_Runner, through
sparsa.torch), the scoring of its answers, and the small helpers every part of the evaluation
shares (the dense teacher's q and k layer by layer, a median timer).

Index: the row, the runner, scoring, the dense layers, timing.
"""

import statistics
import time

import numpy as np
import torch

import sparsa.lab as lab
import sparsa.torch as sparsa_torch


def _kv_per_query_head(k, heads):
    group = heads // k.shape[1]
    return k.repeat_interleave(group, dim=1) if group > 1 else k


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Method:
    """A row: name, target density, detail, and how it chooses: fixed (a MaskSet for every input and
    head, with its density), scores(layer, q, k) -> block scores [batch, heads, blocks, blocks] of
    which each row keeps its diagonal and the best others, `keep` in all (top_k_blocks), or no block
    mask: attention(layer, q, k, v) -> o in place of the layer's attention (k, v per query head), with
    a density where it has one (LSH: pairs kept / causal pairs) or None (FAVOR+). times(q, k, v,
    repeats), where given, times such a row itself (a dict as _timings's)."""

    def __init__(self, name, target, detail, fixed=None, density=None, scores=None, keep=None, attention=None, select=None,
                 times=None):
        self.name, self.target, self.detail = name, target, detail
        self.fixed, self.fixed_density, self.scores, self.keep = fixed, density, scores, keep
        self.attention, self.select, self.times = attention, select, times

    def top(self, layer, q, k):
        """The chosen key blocks as sparsa.torch.attention_top_k takes them: select(layer, q, k, keep)
        where the row has its own (the pooled gate's PooledGate.top_k), else
        sparsa.torch.select_top_k of its scores (on CUDA one kernel writes them as the layout's
        columns; elsewhere top_k_blocks's indices)."""
        if self.select is not None:
            return self.select(layer, q, k, self.keep)
        return sparsa_torch.select_top_k(self.scores(layer, q, k), self.keep)


class _Runner:
    """Runs one teacher under a method: the attention of every layer through sparsa.torch.attention
    with the method's blocks (a batch of inputs and heads folded into one MaskSet of batch x heads
    masks, key/value heads folded alike), and keeps the kept share of the causal blocks; or, for a
    method without a mask, its attention in place of every layer's (kept share None)."""

    def __init__(self, teacher, n, block, dtype):
        self.t, self.n, self.block, self.dtype = teacher, n, block, dtype
        self.device = next(teacher.parameters()).device
        self.blocks = (n + block - 1) // block

    def logits(self, tokens, method):
        kept = []

        def attend(layer, q, k, v):
            heads = q.shape[1]
            if method.attention is not None:   # no block mask: its own density, or none
                kept.append(method.fixed_density)
                return method.attention(layer, q, _kv_per_query_head(k, heads), _kv_per_query_head(v, heads))
            if method.fixed is not None:   # one MaskSet for every layer, or a list of one per layer
                kept.append(method.fixed_density)
                fixed = method.fixed[layer] if isinstance(method.fixed, list) else method.fixed
                return sparsa_torch.attention(q, k, v, fixed, 0)
            kept.append(self.kept_share(method.keep))
            return self.attend_top(q, k, v, method.top(layer, q, _kv_per_query_head(k, heads)))

        with torch.no_grad(), lab._autocast(self.device, self.dtype):
            out = self.t(tokens.to(self.device), attend=None if method is None else attend).float()
        if any(x is None for x in kept):
            return out, None
        return out, (sum(kept) / len(kept) if kept else 1.0)

    def kept_share(self, keep):
        """The share of the causal blocks a top-`keep` selection keeps: every row min(keep, r + 1)."""
        b = self.blocks
        return sum(min(keep, r + 1) for r in range(b)) / (b * (b + 1) / 2)

    def attend_top(self, q, k, v, top):
        """Attention under the chosen blocks (batch x heads folded into one call): attention_top_k, on
        CUDA with no host step, elsewhere with the masks made on the host."""
        return sparsa_torch.attention_top_k(q, k, v, top, self.block)


def _score(logits, data):
    """Hits per answer with its kind and depth: (hit bool, kind int, depth int) numpy arrays."""
    targets = torch.from_numpy(data["targets"]).long()
    answer = targets >= 0
    hit = (logits.argmax(-1).cpu() == targets)[answer].numpy()
    kind = np.broadcast_to(data["kind"][:, None], targets.shape)[answer.numpy()]
    depth = data["depth"][answer.numpy()]
    return hit, kind, depth


def _accuracy(runner, method, data, batch):
    tokens = torch.from_numpy(data["tokens"])
    hits = []
    for b in range(0, tokens.shape[0], batch):
        part = {k: (v[b:b + batch] if isinstance(v, np.ndarray) else v) for k, v in data.items()}
        logits, _ = runner.logits(tokens[b:b + batch], method)
        hits.append(_score(logits, part)[0])
    h = np.concatenate(hits)
    return float(h.mean()) if h.size else 0.0


def _dense_layers(runner, data, batch, each):
    """Runs the dense teacher over `data`, `batch` sequences at a time, calling each(first, layer, q, k)
    with every layer's q and k (k per query head) of sequences first .. first + batch - 1."""
    tokens = torch.from_numpy(data["tokens"])
    for first in range(0, tokens.shape[0], batch):
        def capture(layer, q, k, v, first=first):
            each(first, layer, q, _kv_per_query_head(k, q.shape[1]))
            return runner.t._attend(q, k, v)

        with torch.no_grad(), lab._autocast(runner.device, runner.dtype):
            runner.t(tokens[first:first + batch].to(runner.device), attend=capture)


def _time_ms(fn, device, repeats):
    """Median wall-clock ms of fn() (synchronised on CUDA) over `repeats` calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)
