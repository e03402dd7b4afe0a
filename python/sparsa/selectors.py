"""sparsa.selectors: block selectors in PyTorch, the ones learn/ has in C++, for sparsa.ruler's
evaluation on the GPU (docs/learn.md, "The evaluation in PyTorch"). Every function takes one layer's
q and k, [batch, heads, n, d] (k per query head), and gives block scores [batch, heads, blocks,
blocks]; top_k_grid turns scores into the kept blocks, each row's diagonal first, ties to the lower
block, as learn/distill.cpp's block_mask_top_k.

    import sparsa.selectors as sel
    grid = sel.top_k_grid(sel.quest_scores(q, k, 64), keep=17)        # bool [batch, heads, blocks, blocks]

favor_attention is not a selector: Performer's FAVOR+ replaces the softmax itself (no blocks), as
the engine's favor heads do, for sparsa.ruler's FAVOR+ row.

Index
  [SECTION] block scores   MoBA, Quest, vertical-slash, exact scores, the pooled target; top-k per row
  [SECTION] pooled gate    SeerAttention's gate, trained with early stopping per head
  [SECTION] lightning indexer  DeepSeek's indexer, trained with early stopping per layer
  [SECTION] FAVOR+         Performer's random-feature attention, chunked, as engine/content/favor.cpp
"""

import contextlib
import math
import statistics

import torch
import torch.nn.functional as F

import sparsa
import sparsa.torch as _st

__all__ = ["blocks_per_row", "moba_scores", "quest_scores", "exact_scores", "vertical_slash_scores", "pooled_target",
           "pooled_targets", "TARGETS", "top_k_blocks", "top_k_grid", "KEY_POOLS", "QUERY_POOLS", "PooledGate", "Indexer", "favor_attention"]


def blocks_per_row(density, blocks, causal=True):
    """Key blocks a row keeps at a block density (learn/ruler_eval.cpp, ruler_blocks_per_row): causal,
    the k whose causal kept share, sum over rows of min(k, r + 1) over blocks (blocks + 1) / 2, is
    nearest the density (ties to the smaller k)."""
    if not causal:
        return max(1, min(blocks, int(round(density * blocks))))
    total = blocks * (blocks + 1) / 2
    best, best_gap = 1, math.inf
    for k in range(1, blocks + 1):
        gap = abs((k * (k + 1) / 2 + (blocks - k) * k) / total - density)
        if gap < best_gap:
            best, best_gap = k, gap
    return best


# [SECTION] block scores: q, k [batch, heads, n, d] (k per query head) -> [batch, heads, blocks, blocks]


_CONSTANTS = {}


def _constant(key, make):
    """make(), a tensor that depends on key alone (a mask of the block grid, row counts), kept per key
    so that a selection launches no kernel to rebuild it (at 16,384 and blocks of 64 the selection is
    tens of kernels, a few microseconds each even in a CUDA graph). Not kept when made while a CUDA
    graph is being captured: that memory is the graph's."""
    t = _CONSTANTS.get(key)
    if t is None:
        t = make()
        if not (t.is_cuda and torch.cuda.is_current_stream_capturing()):
            _CONSTANTS[key] = t
    return t


def _grid_masks(blocks, device):
    """(the diagonal, the blocks above it) of a blocks x blocks grid: bool, on device, kept."""
    return (_constant(("eye", blocks, str(device)), lambda: torch.eye(blocks, dtype=torch.bool, device=device)),
            _constant(("upper", blocks, str(device)),
                      lambda: torch.ones(blocks, blocks, dtype=torch.bool, device=device).triu(1)))


def _blocked(x, block):
    """x [batch, heads, n, d] -> ([batch, heads, blocks, block, d] zero-padded, float32 rows per block [blocks])."""
    n = x.shape[2]
    blocks = (n + block - 1) // block
    pad = blocks * block - n
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    # made on the device (no host scalar written into it), so a selection can be captured in a CUDA graph
    counts = _constant(("counts", n, block, str(x.device)),
                       lambda: (n - torch.arange(blocks, device=x.device) * block).clamp(max=block).to(torch.float32))
    return x.reshape(x.shape[0], x.shape[1], blocks, block, x.shape[3]), counts


def _pool_cuda(x, block, bounds, projection=None):
    """engine/cuda/select/block_pool.hpp on a CUDA x [batch, heads, n, d] with channel stride 1 (any other
    strides): float32 [batch, heads, blocks, d] (each block's mean) or [.., 3 d] (mean, max, min), x
    read once in one launch; with projection (float32 [heads, d or 3 d, width] on x's device) those
    rows through each head's map, [.., width], in the same launch. None where it does not apply:
    another device or dtype, a build without the CUDA engine, or an x whose gradient is wanted (the
    kernel has no backward)."""
    if not x.is_cuda or x.dtype not in _st._CUDA_DTYPE_NAMES or x.dim() != 4 or x.numel() == 0 or x.stride(3) != 1 \
            or x.shape[3] > 1024 or (torch.is_grad_enabled() and x.requires_grad):
        return None
    pool = getattr(sparsa._sparsa, "_cuda_block_pool", None)   # only in a build with the CUDA engine
    if pool is None:
        return None
    batch, heads, n, d = x.shape
    width = (3 if bounds else 1) * d
    if projection is not None:
        if projection.shape != (heads, width, projection.shape[2]) or projection.dtype != torch.float32 \
                or projection.device != x.device or not projection.is_contiguous() or projection.shape[2] > 1024:
            return None
        width = projection.shape[2]
    out = torch.empty(batch, heads, -(-n // block), width, dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        pool(x.data_ptr(), _st._CUDA_DTYPE_NAMES[x.dtype], batch, heads, n, d, x.stride(0), x.stride(1), x.stride(2), block, bounds,
             out.data_ptr(), torch.cuda.current_stream().cuda_stream,
             0 if projection is None else projection.data_ptr(), 0 if projection is None else width)
    return out


def _float32_products(device):
    """No autocast for the selectors' own products: inside a model's bfloat16 autocast region a matmul
    of float32 maps would run in bfloat16, rounding the gate's scores to 8 bits (ties at the cut) and
    handing the CUDA kernels, which read float32, a bfloat16 tensor."""
    return torch.autocast(device.type, enabled=False)


def _block_means(x, block):
    """Each block's mean row, float32 [batch, heads, blocks, d]: summed in float32 straight from x's
    dtype (no float32 copy of all of x: at 16 heads x 16,384 x 128 in bf16 that copy alone is 128 MB
    written and read again); on CUDA by one kernel (_pool_cuda: the same means up to float32's
    rounding of the sum's order)."""
    pooled = _pool_cuda(x, block, False)
    if pooled is not None:
        return pooled
    xb, counts = _blocked(x, block)
    return xb.sum(3, dtype=torch.float32) / counts[:, None]


def moba_scores(q, k, block):
    """Mean of query block r . mean of key block c (learn/selectors.cpp, moba_scores)."""
    return _block_means(q, block) @ _block_means(k, block).transpose(-1, -2)


def _block_bounds(k, block):
    """The largest and smallest key of each block per channel: ([batch, heads, blocks, d] twice)."""
    kb, _ = _blocked(k, block)   # in k's dtype: a largest or smallest element is exact in any dtype
    last = k.shape[2] - (kb.shape[2] - 1) * block   # rows of the last block: its padding must not be a key
    hi = kb.amax(3).float()
    lo = kb.amin(3).float()
    if last < block:
        hi[:, :, -1] = kb[:, :, -1, :last].amax(2).float()
        lo[:, :, -1] = kb[:, :, -1, :last].amin(2).float()
    return hi, lo


def quest_scores(q, k, block):
    """Quest's bound u_ic = q+ . hi_c + q- . lo_c (the largest and smallest key of block c per channel),
    a query block's score the largest u_ic over its rows (learn/selectors.cpp, quest_scores)."""
    hi, lo = _block_bounds(k, block)
    n = k.shape[2]
    last = n - (hi.shape[2] - 1) * block
    qf = q.float()
    u = qf.clamp(min=0) @ hi.transpose(-1, -2) + qf.clamp(max=0) @ lo.transpose(-1, -2)   # [batch, heads, n, blocks]
    ub, _ = _blocked(u, block)
    if last < block:
        ub[:, :, -1, last:] = -math.inf
    return ub.amax(3)


def vertical_slash_scores(q, k, block, last_queries=64):
    """MInference's vertical-and-slash estimate as block scores (learn/selectors.cpp,
    select_vertical_slash; causal): the last `last_queries` queries' softmax over the keys they see,
    summed per key (vertical) and per offset i - j (slash); column c scores its keys' vertical mass,
    block diagonal D = r - c the slash mass of the offsets crossing it (offset o weighs
    (B - |o - D B|) / B). The C++ walks one ranking of columns and diagonals and gives each row the
    blocks they name in turn; a block is reached at its column's or its diagonal's place, whichever
    ranks first, so block (r, c) scores max(column c, diagonal r - c) and the top-k rule gives the
    same blocks but where two candidates tie exactly. [batch, heads, blocks, blocks]."""
    batch, heads, n, d = q.shape
    m = min(max(last_queries, 1), n)
    first = n - m
    s = (q[:, :, first:].float() @ k.float().transpose(-1, -2)) / math.sqrt(d)          # [batch, heads, m, n]
    i = torch.arange(first, n, device=q.device)[:, None]
    j = torch.arange(n, device=q.device)[None, :]
    p = torch.softmax(s.masked_fill(j > i, -math.inf), dim=-1)
    vertical = p.sum(2)                                                                    # [batch, heads, n]
    offset = (i - j).clamp(min=0).expand(batch, heads, m, n)
    slash = torch.zeros(batch, heads, n, device=q.device).scatter_add_(-1, offset.reshape(batch, heads, -1),
                                                                       p.reshape(batch, heads, -1))   # p = 0 where j > i
    blocks = (n + block - 1) // block
    column = _key_block_sums(vertical, block)                                              # [batch, heads, blocks]
    o = torch.arange(n, device=q.device)
    low, frac = o // block, (o % block).float() / block                                   # offset o: diagonals low and low + 1
    diagonal = torch.zeros(batch, heads, blocks + 1, device=q.device)
    diagonal.scatter_add_(-1, low.expand(batch, heads, n), slash * (1 - frac))
    diagonal.scatter_add_(-1, (low + 1).expand(batch, heads, n), slash * frac)
    r = torch.arange(blocks, device=q.device)
    d_index = (r[:, None] - r[None, :]).clamp(min=0)                                      # r - c, 0 above the diagonal
    by_diagonal = diagonal[..., :blocks][..., d_index]                                     # [batch, heads, blocks, blocks]
    return torch.maximum(column[..., None, :].expand_as(by_diagonal), by_diagonal)


def _key_block_sums(p, block):
    """p [..., rows, n] -> per key block sums [..., rows, blocks]."""
    n = p.shape[-1]
    blocks = (n + block - 1) // block
    if blocks * block != n:
        p = F.pad(p, (0, blocks * block - n))
    return p.reshape(*p.shape[:-1], blocks, block).sum(-1)


def _row_shares(q, k, block, causal, chunk_rows):
    """Yields, chunk_rows query rows at a time: (the chunk's query blocks as a slice, each row's share of
    softmax(q k^T / sqrt(d)) per key block [batch, heads, row blocks, block, key blocks], the rows of
    its last query block that exist). Later keys are left out of a row when causal; rows past n are
    zeros. A dense q k^T in float32."""
    n, d = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d)
    chunk = max(block, chunk_rows // block * block)
    kf = k.float()
    for first in range(0, n, chunk):
        last = min(n, first + chunk)
        s = (q[:, :, first:last].float() @ kf.transpose(-1, -2)) * scale
        if causal:
            rows = torch.arange(first, last, device=q.device)[:, None]
            s = s.masked_fill(torch.arange(n, device=q.device)[None, :] > rows, -math.inf)
        shares, _ = _blocked(_key_block_sums(torch.softmax(s, dim=-1), block), block)
        yield slice(first // block, (last + block - 1) // block), shares, (last - first - 1) % block + 1


def exact_scores(q, k, block, chunk_rows=2048):
    """The identity gate's scores (learn/selectors.cpp, select_exact): each query row's share of its
    softmax(q k^T / sqrt(d)) over every key (later keys count in a causal row's total; their blocks
    are never kept), per key block; a block row's score the largest share among its rows."""
    blocks = (q.shape[2] + block - 1) // block
    out = torch.empty(q.shape[0], q.shape[1], blocks, blocks, dtype=torch.float32, device=q.device)
    for rows, shares, valid in _row_shares(q, k, block, False, chunk_rows):
        shares[:, :, -1, valid:] = -math.inf   # rows past n are no rows
        out[:, :, rows] = shares.amax(3)
    return out


TARGETS = ("sum", "max")


def pooled_targets(q, k, block, causal=True, chunk_rows=2048, pools=("sum",)):
    """The teacher's attention pooled per block, each block row then divided by its sum: {pool:
    [batch, heads, blocks, blocks] float32} for each of `pools`, from one pass over
    softmax(q k^T / sqrt(d)) with later keys left out when causal. "sum" (learn/pool.cpp,
    row_share): the shares of query block r's rows in key block c summed, the block's mass. "max":
    the largest of those rows' shares, the exact-score selector's rule (exact_scores), so that a
    block one row attends to (an answer row's needle) weighs as much as one every row attends to."""
    unknown = set(pools) - set(TARGETS)
    if unknown:
        raise ValueError(f"pooled_targets: pools must be of {', '.join(TARGETS)}, not {', '.join(sorted(unknown))}")
    blocks = (q.shape[2] + block - 1) // block
    out = {p: torch.zeros(q.shape[0], q.shape[1], blocks, blocks, dtype=torch.float32, device=q.device) for p in pools}
    for rows, shares, valid in _row_shares(q, k, block, causal, chunk_rows):
        if "sum" in out:
            out["sum"][:, :, rows] = shares.sum(3)   # rows past n are zeros
        if "max" in out:
            shares[:, :, -1, valid:] = 0.0   # rows past n are no rows (shares are >= 0)
            out["max"][:, :, rows] = shares.amax(3)
    return {p: t / t.sum(-1, keepdim=True) for p, t in out.items()}


def pooled_target(q, k, block, causal=True, chunk_rows=2048):
    """pooled_targets' "sum": the teacher's attention summed per (query block, key block), each block
    row normalised (learn/pool.cpp, row_share). [batch, heads, blocks, blocks] float32."""
    return pooled_targets(q, k, block, causal, chunk_rows)["sum"]


def top_k_blocks(scores, keep, causal=True):
    """int64 [batch, heads, blocks, keep]: each row's diagonal block, then its highest-scoring key
    blocks (c <= r when causal) until it keeps `keep` (learn/distill.cpp, block_mask_top_k with
    keep_diagonal; ties to the lower block: a stable sort), in that order. A causal row r < keep - 1
    has only r + 1 blocks to keep: its entries past them are blocks above r (to be ignored, as
    top_k_grid and sparsa.torch.attention_top_k do). All on the scores' device, no host step."""
    blocks = scores.shape[-1]
    eye, upper = _grid_masks(blocks, scores.device)
    s = scores.float().masked_fill(eye, math.inf)   # a new tensor: scores stay as they are
    if causal:
        s.masked_fill_(upper, -math.inf)
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :min(keep, blocks)]


def top_k_grid(scores, keep, causal=True):
    """bool [batch, heads, blocks, blocks]: top_k_blocks as a grid (blocks above the diagonal dropped
    when causal)."""
    blocks = scores.shape[-1]
    grid = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, top_k_blocks(scores, keep, causal), True)
    if causal:
        grid &= ~_grid_masks(blocks, scores.device)[1]
    return grid


# [SECTION] pooled gate


KEY_POOLS = ("mean", "mean+max+min")
QUERY_POOLS = ("mean", "rows")


def _rows_to_blocks(s_rows, block):
    """Row scores [..., n, key blocks] -> block scores [..., blocks, key blocks]: each query block's
    rows pooled by log-sum-exp (a smooth largest; rows past n left out)."""
    n = s_rows.shape[-2]
    blocks = (n + block - 1) // block
    if blocks * block != n:
        s_rows = F.pad(s_rows, (0, 0, 0, blocks * block - n), value=-math.inf)
    return torch.logsumexp(s_rows.reshape(*s_rows.shape[:-2], blocks, block, s_rows.shape[-1]), dim=-2)


def _block_keys(k, block, key_pool):
    """What the pooled gate reads of each key block: its mean key ("mean", learn/pooled_gate.hpp's),
    or the mean, the largest and the smallest key per channel side by side ("mean+max+min", as
    SeerAttention pools K): [batch, heads, blocks, d or 3 d]. On CUDA the three come from one read of
    k (_pool_cuda)."""
    if key_pool != "mean":
        pooled = _pool_cuda(k, block, True)
        if pooled is not None:
            return pooled
    mean = _block_means(k, block)
    if key_pool == "mean":
        return mean
    return torch.cat([mean, *_block_bounds(k, block)], -1)


class PooledGate:
    """SeerAttention's pooled gate (learn/pooled_gate.hpp), per (layer, head): a = mean(Q_r) wq,
    b = keys(K_c) wk ([head_dim, width] and [head_dim or 3 head_dim, width]: _block_keys), scores
    a_r . b_c / sqrt(width), -inf above the diagonal when causal. wq, wk start as normal noise of
    deviation 1 / sqrt(their input width) from torch's generator seeded with `seed` (the C++ gate
    draws its own noise: the two start apart). query_pool "rows" scores each query row's
    q_i wq against b_c instead of the block's mean and pools the rows of a block by log-sum-exp (as
    the C++ BlockGate's --gate-query rows): n x blocks x width products a head instead of blocks^2 x
    width, for query blocks whose rows look for different key blocks (an answer row among others)."""

    def __init__(self, layers, heads, head_dim, width=32, block=16, causal=True, seed=1, device="cpu", key_pool="mean",
                 query_pool="mean"):
        if key_pool not in KEY_POOLS:
            raise ValueError(f"PooledGate: key_pool must be one of {', '.join(KEY_POOLS)}, not {key_pool!r}")
        if query_pool not in QUERY_POOLS:
            raise ValueError(f"PooledGate: query_pool must be one of {', '.join(QUERY_POOLS)}, not {query_pool!r}")
        g = torch.Generator().manual_seed(seed)
        key_dim = head_dim * (1 if key_pool == "mean" else 3)
        self.width, self.block, self.causal, self.key_pool, self.query_pool = width, block, causal, key_pool, query_pool
        self.wq = (torch.randn(layers, heads, head_dim, width, generator=g, dtype=torch.float64) / math.sqrt(head_dim)).to(device)
        self.wk = (torch.randn(layers, heads, key_dim, width, generator=g, dtype=torch.float64) / math.sqrt(key_dim)).to(device)

    def scores(self, layer, q_side, k_mean, wq=None, wk=None):
        """q_side [batch, heads, blocks, head_dim] (the block means; query_pool "rows": the rows,
        [batch, heads, n, head_dim]), k_mean [batch, heads, blocks, head_dim or 3 head_dim] -> logits
        [batch, heads, blocks, blocks]."""
        wq = self.wq[layer] if wq is None else wq
        wk = self.wk[layer] if wk is None else wk
        return self._logits(q_side.to(wq.dtype) @ wq, k_mean.to(wk.dtype) @ wk)

    def _logits(self, a, b):
        """a: the query side through wq ([.., blocks, width], or [.., n, width] for rows), b: the keys
        through wk [.., blocks, width] -> block logits, -inf above the diagonal when causal."""
        s = a @ b.transpose(-1, -2) / math.sqrt(self.width)
        if self.query_pool == "rows":
            s = _rows_to_blocks(s, self.block)
        if self.causal:
            s = s.masked_fill(_grid_masks(s.shape[-1], s.device)[1], -math.inf)
        return s

    def block_scores(self, layer, q, k):
        """The gate's scores of every (query block, key block) from q, k [batch, heads, n, head_dim] (float32
        maps: what selection costs at inference): [batch, heads, blocks, blocks]. The products stay in
        float32 inside an autocast region too (_float32_products)."""
        with _float32_products(q.device):
            q_side = q if self.query_pool == "rows" else _block_means(q, self.block)
            return self.scores(layer, q_side, _block_keys(k, self.block, self.key_pool), *self._maps32(layer))

    def _maps32(self, layer):
        """Layer `layer`'s wq and wk in float32, converted once per state of the maps (a new tensor, as
        train() sets, or one changed in place: its version counter moves)."""
        versions = (self.wq._version, self.wk._version)
        kept = getattr(self, "_float32", None)
        if kept is None or kept[0] is not self.wq or kept[1] is not self.wk or kept[2] != versions:
            kept = self._float32 = (self.wq, self.wk, versions, self.wq.float(), self.wk.float())
        return kept[3][layer], kept[4][layer]

    def select(self, layer, q, k, keep):
        """The top `keep` blocks a row by the gate's scores, as a grid."""
        return top_k_grid(self.block_scores(layer, q, k), keep, self.causal)

    def top_k(self, layer, q, k, keep):
        """The top `keep` blocks a row by the gate's scores as sparsa.torch.attention_top_k takes them (a
        sparsa.torch.TopK; causal gates): sparsa.torch.select_top_k(block_scores(...)), on CUDA in four
        launches: q's block means through wq and k's pooled keys through wk, each in the pooling kernel
        (_pool_cuda with a projection), their product (one matmul, float32) and the top-k kernel. With
        row queries q's rows through wq (one matmul) and the top-k kernel scoring each row against the
        pooled keys and pooling a block's rows by log-sum-exp (engine/cuda/select/top_k_columns.hpp,
        cuda_top_k_columns_rows), so no [n, blocks] grid is written. The blocks are block_scores's up
        to float32's rounding of other summation orders. (Scoring a . b inside the top-k kernel as
        well, with no grid at all, was measured slower on an H100: each thread's dot products read b
        from memory where the matmul's tensor cores do not; bench/results/learn-ruler-gpu-nvidia-h100,
        "Fifth run".)"""
        if not self.causal:
            raise ValueError("PooledGate.top_k: a top-k layout is causal; use select() for a bidirectional gate")
        batch, heads, n = q.shape[:3]
        blocks = -(-n // self.block)
        rows_kernel = getattr(sparsa._sparsa, "_cuda_top_k_columns_rows", None)
        with _float32_products(q.device):
            if q.is_cuda and k.shape[:3] == q.shape[:3]:
                wq, wk = self._maps32(layer)
                b = _pool_cuda(k, self.block, self.key_pool != "mean", wk)   # [.., blocks, width]
                if b is not None and self.query_pool == "mean":
                    a = _pool_cuda(q, self.block, False, wq)
                    if a is not None:
                        return _st.select_top_k((a @ b.transpose(-1, -2)).div_(math.sqrt(self.width)), keep)
                elif b is not None and rows_kernel is not None and 1 <= keep <= blocks \
                        and blocks <= sparsa._sparsa._cuda_top_k_max_blocks \
                        and self.block * self.width <= sparsa._sparsa._cuda_top_k_rows_max_floats:
                    a = (q.float() @ wq).contiguous()   # [.., n, width]
                    columns = torch.empty(batch * heads * _st._top_k_entries(blocks, keep), dtype=torch.int32, device=q.device)
                    with torch.cuda.device(q.device):
                        rows_kernel(a.data_ptr(), b.data_ptr(), self.width, math.sqrt(self.width), batch * heads, n, self.block,
                                    keep, columns.data_ptr(), torch.cuda.current_stream().cuda_stream)
                    return _st.TopK((batch, heads, blocks), keep, columns=columns)
            return _st.select_top_k(self.block_scores(layer, q, k), keep)

    def _kl(self, wq, wk, q_side, k_mean, target):
        """KL(target || softmax(scores)) per (layer, head), summed over block rows / blocks, averaged
        over inputs: [layers, heads]. q_side: [inputs, layers, heads, blocks, d] (query_pool "rows":
        the rows, [inputs, layers, heads, n, d]); k_mean: the keys as _block_keys gives them,
        [inputs, layers, heads, blocks, d or 3 d]; target [inputs, layers, heads, blocks, blocks]."""
        s = self._logits(q_side.to(wq.dtype) @ wq[None], k_mean.to(wk.dtype) @ wk[None])
        blocks = s.shape[-1]
        logp = torch.log_softmax(s, dim=-1)
        t = target.to(s.dtype)
        terms = torch.where(t > 0, t * (torch.log(t.clamp(min=1e-300)) - logp.clamp(min=-1e300)), torch.zeros_like(t))
        return terms.sum((-1, -2)).mean(0) / blocks

    def train(self, train, validation, steps=400, lr=1e-2, eval_every=20, patience=5):
        """Adam (0.9, 0.999, 1e-8) per (layer, head) on the mean KL of `train`, the validation KL every
        `eval_every` steps; a head stops after `patience` measurements without a better one and keeps
        its best parameters (learn/early_stopped_adam.hpp). train, validation: (q_mean, k_mean,
        target) as _kl takes them. Returns {first_train, last_train, first_validation, best_validation,
        steps} (means over heads; steps: the longest head's)."""
        wq = self.wq.clone().requires_grad_(True)
        wk = self.wk.clone().requires_grad_(True)
        opt = torch.optim.Adam([wq, wk], lr=lr, betas=(0.9, 0.999), eps=1e-8)
        # Row queries hold every row of every input: their logits are taken as many inputs at a time
        # as keep each chunk's row logits near 1 GB (each chunk's gradient summed before the step),
        # so memory follows the chunk, not the set.
        def kl_of(examples, backward=None):
            inputs = examples[0].shape[0]
            size = inputs
            if self.query_pool == "rows":
                row_logits = examples[0][0].numel() // examples[0].shape[-1] * examples[1].shape[-2] * 8   # [layers, heads, n, blocks]
                size = max(1, min(inputs, (1 << 30) // max(1, row_logits)))
            total = 0
            for first in range(0, inputs, size):
                part = self._kl(wq, wk, *(x[first:first + size] for x in examples)) * (min(size, inputs - first) / inputs)
                if backward is not None:
                    (part * backward).sum().backward()   # heads that stopped take no gradient
                total = total + part.detach()
            return total

        with torch.no_grad():
            best_v = kl_of(validation)
        first_v = best_v.clone()
        best_q, best_k = wq.detach().clone(), wk.detach().clone()
        active = torch.ones_like(best_v, dtype=torch.bool)
        since = torch.zeros_like(best_v, dtype=torch.long)
        first_t = last_t = None
        ran = 0
        for step in range(steps):
            opt.zero_grad()
            loss = kl_of(train, backward=active)
            opt.step()
            ran = step + 1
            if first_t is None:
                first_t = loss.detach().clone()
            last_t = torch.where(active, loss.detach(), last_t if last_t is not None else loss.detach())
            with torch.no_grad():
                # a stopped head keeps its best parameters (Adam's moments may still move them)
                wq[~active] = best_q[~active]
                wk[~active] = best_k[~active]
                if (step + 1) % eval_every and step + 1 != steps:
                    continue
                v = kl_of(validation)
                better = active & (v < best_v)
                best_v = torch.where(better, v, best_v)
                best_q[better], best_k[better] = wq[better], wk[better]
                since = torch.where(better, torch.zeros_like(since), since + active.long())
                active &= since < patience
                if not bool(active.any()):
                    break
        self.wq, self.wk = best_q, best_k
        return {"first_train": float(first_t.mean()), "last_train": float(last_t.mean()),
                "first_validation": float(first_v.mean()), "best_validation": float(best_v.mean()), "steps": ran}


# [SECTION] lightning indexer


def _concat_heads(x):
    """[batch, heads, n, d] -> [batch, n, heads d]: every head's row side by side."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])


class Indexer:
    """DeepSeek's lightning indexer (learn/indexer.hpp), per layer: index scores I_ts = sum_j w_tj
    ReLU(a_tj . b_s) with a_tj = Wq_j x_t, b_s = Wk y_s, w_tj = ww_j . x_t, x and y a token's query and
    key rows of every head side by side; trained by KL to the layer's attention summed over heads on
    sampled query rows, each weighted by 1 - its share on its own block. A query block keeps the key
    blocks of most predicted mass (each row's softmax of its scores per key block, the largest over
    the block's rows), the same blocks in every head. Noise of deviation 0.1 / sqrt(in) from torch's
    generator (the C++ indexer draws its own)."""

    def __init__(self, layers, heads, head_dim, index_heads=2, width=8, block=16, causal=True, seed=1, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        d_in = heads * head_dim
        noise = lambda *shape: (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.1 / math.sqrt(d_in)).to(device)  # noqa: E731
        self.index_heads, self.width, self.block, self.causal = index_heads, width, block, causal
        self.wq, self.wk, self.ww = noise(layers, index_heads * width, d_in), noise(layers, width, d_in), noise(layers, index_heads, d_in)

    def _scores(self, x, y, wq, wk, ww, positions):
        """Index scores of query rows x [batch, rows, in] at sequence positions `positions` [rows]
        against the keys y [batch, n, in]: [batch, rows, n], -inf after each row's position when causal."""
        a = (x @ wq.transpose(-1, -2)).unflatten(-1, (self.index_heads, self.width))    # [batch, rows, J, w]
        b = y @ wk.transpose(-1, -2)                                                      # [batch, n, w]
        w = x @ ww.transpose(-1, -2)                                                      # [batch, rows, J]
        s = (w[..., None] * torch.relu(torch.einsum("brjw,bnw->brjn", a, b))).sum(2)
        if self.causal:
            s = s.masked_fill(torch.arange(y.shape[1], device=x.device)[None, :] > positions[:, None], -math.inf)
        return s

    def select(self, layer, q, k, keep, chunk_rows=2048):
        """The top `keep` blocks a row by predicted mass, every head alike: bool [batch, heads, blocks, blocks]."""
        return top_k_grid(self.block_scores(layer, q, k, chunk_rows), keep, self.causal)

    def block_scores(self, layer, q, k, chunk_rows=2048):
        """Each (query block, key block)'s predicted mass (the largest over the block's rows), the same in
        every head: [batch, heads, blocks, blocks] (an expanded view)."""
        x, y = _concat_heads(q.float()), _concat_heads(k.float())
        wq, wk, ww = self.wq[layer].float(), self.wk[layer].float(), self.ww[layer].float()
        n, block = q.shape[2], self.block
        blocks = (n + block - 1) // block
        score = torch.empty(q.shape[0], blocks, blocks, device=q.device)
        chunk = max(block, chunk_rows // block * block)
        for first in range(0, n, chunk):
            last = min(n, first + chunk)
            positions = torch.arange(first, last, device=q.device)
            mass, _ = _blocked(_key_block_sums(torch.softmax(self._scores(x[:, first:last], y, wq, wk, ww, positions), -1), block)[:, None],
                               block)
            if (last - first) % block:
                mass[:, :, -1, (last - first) % block:] = -math.inf
            score[:, first // block:(last + block - 1) // block] = mass.amax(3)[:, 0]
        return score[:, None].expand(q.shape[0], q.shape[1], blocks, blocks)

    @staticmethod
    def examples(q, k, block, rows, seed, causal=True):
        """Training rows of one layer of a batch: (x [batch, n, in], y, row indices [R], targets [batch, R, n]
        (the attention summed over heads / heads), weights [batch, R])."""
        n = q.shape[2]
        g = torch.Generator().manual_seed(seed)
        picked = torch.sort(torch.randperm(n, generator=g)[:rows]).values.to(q.device) if rows < n else torch.arange(n, device=q.device)
        s = (q[:, :, picked].float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[3])   # [batch, heads, R, n]
        if causal:
            s = s.masked_fill(torch.arange(n, device=q.device)[None, :] > picked[:, None], -math.inf)
        target = torch.softmax(s, -1).mean(1)                                                  # [batch, R, n]
        own = torch.stack([target[:, i, (t // block) * block:min(n, (t // block + 1) * block)].sum(-1)
                           for i, t in enumerate(picked.tolist())], 1)
        return _concat_heads(q.float()), _concat_heads(k.float()), picked, target, (1 - own).clamp(min=1e-3)

    def _loss(self, layer, wq, wk, ww, ex):
        """sum weight KL(target || softmax(scores)) / sum weight, averaged over the examples' inputs."""
        total = 0.0
        for x, y, picked, target, weight in ex:
            logp = torch.log_softmax(self._scores(x[:, picked].double(), y.double(), wq, wk, ww, picked), -1)
            t, wt = target.double(), weight.double()
            kl = torch.where(t > 0, t * (torch.log(t.clamp(min=1e-300)) - logp.clamp(min=-1e300)), torch.zeros_like(t)).sum(-1)
            total = total + ((wt * kl).sum(-1) / wt.sum(-1)).mean()
        return total / len(ex)

    def train(self, train, validation, steps=300, lr=1e-2, eval_every=20, patience=4):
        """Adam (0.9, 0.999, 1e-8) per layer on the examples ([layer] -> list of Indexer.examples), the
        validation loss every eval_every steps, each layer keeping its best (learn/early_stopped_adam.hpp).
        Returns {first_train, last_train, first_validation, best_validation, steps} (means over layers)."""
        reports = []
        for layer in range(self.wq.shape[0]):
            w = [p[layer].clone().requires_grad_(True) for p in (self.wq, self.wk, self.ww)]
            opt = torch.optim.Adam(w, lr=lr, betas=(0.9, 0.999), eps=1e-8)
            with torch.no_grad():
                best_v = first_v = float(self._loss(layer, *w, validation[layer]))
            best, since, first_t, last_t, ran = [p.detach().clone() for p in w], 0, None, None, 0
            for step in range(steps):
                opt.zero_grad()
                loss = self._loss(layer, *w, train[layer])
                loss.backward()
                opt.step()
                ran, last_t = step + 1, float(loss)
                first_t = last_t if first_t is None else first_t
                if (step + 1) % eval_every and step + 1 != steps:
                    continue
                with torch.no_grad():
                    v = float(self._loss(layer, *w, validation[layer]))
                if v < best_v:
                    best_v, best, since = v, [p.detach().clone() for p in w], 0
                else:
                    since += 1
                    if since >= patience:
                        break
            for p, b in zip((self.wq, self.wk, self.ww), best):
                p[layer] = b
            reports.append((first_t, last_t, first_v, best_v, ran))
        mean = lambda i: statistics.fmean(r[i] for r in reports)  # noqa: E731
        return {"first_train": mean(0), "last_train": mean(1), "first_validation": mean(2), "best_validation": mean(3),
                "steps": max(r[4] for r in reports)}


# [SECTION] FAVOR+
#
# engine/content/favor.hpp's definition, step for step, so that the CPU engine's favor heads and this
# agree to float32 rounding: x' = x sqrt(s); phi(x')_r = exp(omega_r x' - |x'|^2 / 2 - c) / sqrt(m);
# O = phi(Q') (phi(K')^T V) / (phi(Q') phi(K')^T 1), causal: sums over keys j <= i. The stabilisers
# are the engine's: a query row's largest feature is 1 (|q'|^2 / 2 and 1 / sqrt(m) cancel in the
# ratio and are left out), the head's largest key feature is 1 (c = the max over all its keys j and
# features r of omega_r k'_j - |k'_j|^2 / 2), and exponents below -87 give 0, not a subnormal.


# exp(-87) = 1.6e-38, float32's smallest normal range: the engine's kFavorMinExponent.
_FAVOR_MIN_EXPONENT = -87.0


def _autocast_off(device):
    """Autocast off on device's type: under CUDA's bfloat16 autocast (sparsa.lab._autocast) the float32
    feature products would otherwise run in bfloat16."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _favor_exponents(x, omega_t, root_scale, sign):
    """The engine's phi_compute up to the key shift, for rows x [batch, heads, rows, d] float32 and
    omega_t [heads, d, m]: (omega_r x^ - max_r omega_r x^) |x'| as float32 [batch, heads, rows, m],
    |x'| and max_r omega_r x^ (float64 [batch, heads, rows]), x^ the unit row (0 for a zero row),
    |x'| = |x| root_scale. The largest entry is subtracted in float before |x'| multiplies, in
    double: the exponent's rounding is that of its spread, whatever the norms."""
    length = x.double().square().sum(-1).sqrt()
    inverse = (1.0 / length).masked_fill(length == 0, 0.0)
    x_hat = ((sign * x).double() * inverse[..., None]).float()
    p = x_hat @ omega_t                                             # omega x^ [batch, heads, rows, m]
    top = p.amax(-1, keepdim=True)
    length = length * root_scale
    return ((p - top).double() * length[..., None]).float(), length, top[..., 0].double()


def _favor_phi(e):
    """exp(e), or 0 where e < -87 (the engine stores those features as 0)."""
    return e.exp().masked_fill(e < _FAVOR_MIN_EXPONENT, 0.0)


def favor_attention(q, k, v, omega, causal=True, scale=None, chunk=256):
    """Performer's FAVOR+ attention, as the CPU engine's favor heads (engine/content/favor.cpp,
    favor_forward) compute it: o [batch, heads, n, d] in q's dtype.

    q, k, v: [batch, heads, n, d], any float dtype (k and v per query head); omega: the features, one
    set per head, [heads, m, d] (e.g. sparsa.favor_features(seed, layer, h, m, d) stacked over h: the
    ones a script's favor(m, seed) draws); causal: query i sums over keys j <= i (prefix sums);
    scale: the softmax scale (None or 0: 1 / sqrt(d); negative: q' = q sqrt|s|, k' = -k sqrt|s|).
    As in the engine, the features and their products are float32 and the states phi(K)^T V,
    phi(K)^T 1 are summed in float64, each query's denominator a float64 dot product; a row whose
    denominator is 0, or whose N / D leaves float32, gives o = 0. Keys go `chunk` at a time (the
    chunk's own pairs through a masked [chunk, chunk] product, earlier keys through the state):
    memory O(batch heads (chunk (chunk + m + d) + m d)) besides q, k, v and o, work O(batch heads n m d).
    Two passes over the keys: the first finds the head's key stabiliser. Nothing is read back to the
    host (no synchronisation on CUDA), so nothing is checked for NaN or Inf: where the engine raises
    for them, the rows they reach come out 0 here (with 0 NaN = NaN in a chunk's masked product, its
    earlier rows too)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"favor_attention: {name} must be a float tensor [batch, heads, n, d], not "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"favor_attention: q is {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} (all three "
                         "[batch, heads, n, d] of one shape: repeat key/value heads per query head)")
    batch, heads, n, d = q.shape
    omega = torch.as_tensor(omega)
    if omega.dim() != 3 or omega.shape[0] != heads or omega.shape[2] != d or omega.shape[1] < 1:
        raise ValueError(f"favor_attention: omega is {tuple(omega.shape)} but q has {heads} heads of d = {d} (give "
                         f"[{heads}, m, {d}]: sparsa.favor_features(seed, layer, h, m, {d}) for each head h, stacked)")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"favor_attention: chunk = {chunk!r} (give an integer >= 1 of keys per step)")
    scale = 1.0 / math.sqrt(d) if scale is None or scale == 0 else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"favor_attention: scale = {scale} (give a finite scale, or None for 1 / sqrt(d))")
    root_scale, key_sign = math.sqrt(abs(scale)), (-1.0 if scale < 0 else 1.0)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    with _autocast_off(q.device):
        omega_t = omega.to(device=q.device, dtype=torch.float32).transpose(-1, -2)   # [heads, d, m]
        m = omega_t.shape[-1]
        part = lambda x, c0: x[:, :, c0:c0 + chunk].float()   # noqa: E731
        # The key stabiliser C: the max over the head's keys j and features r of omega_r k'_j - |k'_j|^2 / 2.
        key_max = torch.full((batch, heads, 1), -math.inf, dtype=torch.float64, device=q.device)
        for c0 in range(0, n, chunk):
            _, length, top = _favor_exponents(part(k, c0), omega_t, root_scale, key_sign)
            key_max = torch.maximum(key_max, (length * top - 0.5 * length * length).amax(-1, keepdim=True))

        def key_features(c0):
            e, length, top = _favor_exponents(part(k, c0), omega_t, root_scale, key_sign)
            return _favor_phi(e + (length * top - 0.5 * length * length - key_max).float()[..., None])

        state = torch.zeros(batch, heads, m, d, dtype=torch.float64, device=q.device)   # S = phi_k^T V
        z = torch.zeros(batch, heads, m, 1, dtype=torch.float64, device=q.device)       # z = phi_k^T 1
        if not causal:
            for c0 in range(0, n, chunk):
                phi_k = key_features(c0)
                state += (phi_k.transpose(-1, -2) @ part(v, c0)).double()
                z += phi_k.double().sum(-2)[..., None]
        for c0 in range(0, n, chunk):
            phi_q = _favor_phi(_favor_exponents(part(q, c0), omega_t, root_scale, 1.0)[0])   # [batch, heads, c, m]
            num = phi_q @ state.float()                     # N = phi_q S (earlier chunks, or every key)
            den = (phi_q.double() @ z)[..., 0]              # D = phi_q z
            if causal:
                phi_k, v_c = key_features(c0), part(v, c0)
                pairs = (phi_q @ phi_k.transpose(-1, -2)).tril()   # the chunk's own pairs, j <= i
                num = num + pairs @ v_c
                den = den + pairs.double().sum(-1)
                state += (phi_k.transpose(-1, -2) @ v_c).double()
                z += phi_k.double().sum(-2)[..., None]
            positive = den > 0
            out = (num.double() / den.masked_fill(~positive, 1.0)[..., None]).float()
            # D = 0, or a D so small that N / D leaves float32 (degraded rows): o = 0, as the engine gives
            keep = positive & torch.isfinite(out).all(-1)
            o[:, :, c0:c0 + chunk] = out.masked_fill(~keep[..., None], 0.0).to(q.dtype)
    return o
