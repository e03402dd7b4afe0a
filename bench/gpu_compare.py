#!/usr/bin/env python3
"""sparsa's CUDA kernels against PyTorch on the same GPU, in the same run: forward, backward, and
forward + backward.

For each mask file (sparsa .npz, one head repeated to --heads heads): FlexAttention compiled with
torch.compile, twice: as its users write it (the pattern's predicate as mask_mod, create_block_mask
compiled at its default 128-token blocks, random blocks as a looked-up table; every "x Flex" is
against this row, and its backward, by torch.compile's autograd, is the only Flex backward timed),
and on the mask's own Flex arrays looked up per pair (docs/formats.md, "FlexAttention"; forward
only, shown, labelled, not compared against; the fair row's output is checked against it), and for
every n seen, scaled_dot_product_attention with the cuDNN and FlashAttention-2 backends, dense and
causal, forward and backward. Inputs are random bf16 [1, heads, n, d].

Times are medians: triton.testing.do_bench, or for a call over --slow-ms (dense and causal at
n = 131,072) the median of a few calls timed by CUDA events (class Timer). The backward alone is
torch.autograd.grad(O, (q, k, v), dO, retain_graph=True) after one forward outside the timer; the
forward + backward times both. Rates count allowed pairs only: 4 * pairs * d FLOPs, the backward
2.5 x that and forward + backward 3.5 x (FlashAttention's count); "on kept blocks" counts every pair
of the kept blocks instead (partial blocks whole), the work a block-sparse kernel does. sparsa's
rows come from bench_cuda --csv (forward kernels and, with --bwd-kernels, backward rows "bwdN");
its forward + backward is the sum of the two medians. bench/gpu_report.py builds the Markdown (the
forward table, the backward table, issue 15's targets with by how much each is missed), printed and
written to OUT_DIR/cuda-<gpu><suffix>.md with the command and the GPU's name; with --copy-to, the
file and the rows (.json, for gpu_report.py to rebuild the Markdown) are copied there.

    python3 bench/gpu_compare.py MASK.npz... --sparsa-csv sparsa.csv [--heads 16] [--d 128]
            [--passes fwd,bwd,fwdbwd] [--merge EARLIER.json] [--slow-ms 100] [--slow-runs 5]
            [--case-budget-ms 5000] [--command TEXT] [--out-dir bench/results] [--suffix TEXT] [--copy-to DIR]

--suffix goes after the GPU's name in the file name (cuda-<gpu><suffix>.md), e.g. -d64. --passes
picks what PyTorch's peers time (fwd, bwd, fwdbwd); a run of some passes only writes
cuda-<gpu><suffix>-<passes>.md (e.g. ...-bwd-fwdbwd.md), never over the full run's file. --merge
joins an earlier run's rows (the .json it wrote in --copy-to; same GPU, heads and d, other passes),
so that two commands, each under the GPU machine's 10 minutes, make the full file: e.g.
--passes fwd --copy-to LOGS, then --passes bwd,fwdbwd --merge LOGS/cuda-<gpu>-fwd.json (the second
skips the table-lookup Flex check the first made, and takes sparsa's rows from its own CSV).

    python3 bench/gpu_compare.py --content-csv content.csv [--heads 16] [--command TEXT] [--out-dir DIR] [--copy-to DIR]

compares instead the content-based heads (bench_content_cuda --csv: lsh, anchors, FAVOR+) with
cuDNN dense and causal at each n and d of the CSV, timed here in the same run, and writes
OUT_DIR/content-cuda-<gpu>.md.
"""
import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys
import time

import numpy as np
import torch
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
import torch.nn.functional as F

# The numpy reader of mask files that ctest checks against docs/formats.md: its Flex block lists
# and block kinds are the ones given to FlexAttention here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "io"))
from read_with_numpy import block_kinds, flex_kv_blocks  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_report  # noqa: E402  (beside this file: the tables and targets, without torch)


def load_masks(path):
    z = np.load(path)
    header = json.loads(z["header"].tobytes().decode("utf-8"))
    assert header["format"] == "sparsa.maskset", f"{path}: not a sparsa mask file"
    return z, header


def allowed_pairs(z, header, layer=0):
    """Allowed (query, key) pairs of each head of `layer` (full blocks count their valid pairs)."""
    n, B, H = header["n"], header["block"], header["heads"]
    Q = -(-n // B)
    sizes = np.minimum(B, n - np.arange(Q) * B)
    words = z["bitmask"].reshape(-1, B * B // 64)   # [partials, B*B/64]
    popcount = np.unpackbits(words.view(np.uint8).reshape(len(words), B * B // 8), axis=1).sum(axis=1)
    out = []
    for h in range(H):
        row_ptr = z["row_ptr"][z["mask_index"][layer, h]]
        total = 0
        for qb in range(Q):
            e = np.arange(row_ptr[qb], row_ptr[qb + 1])
            kb, p = z["col_idx"][e], z["partial_idx"][e]
            total += int((sizes[qb] * sizes[kb])[p < 0].sum()) + int(popcount[p[p >= 0]].sum())
        out.append(total)
    return out


def kept_block_pairs(z, header, layer=0):
    """(query, key) pairs inside the kept blocks of each head of `layer`, partial blocks whole:
    the work a block-sparse kernel does (its "rate on kept blocks" counts these)."""
    n, B, H = header["n"], header["block"], header["heads"]
    Q = -(-n // B)
    sizes = np.minimum(B, n - np.arange(Q) * B)
    out = []
    for h in range(H):
        row_ptr = z["row_ptr"][z["mask_index"][layer, h]]
        rows = np.repeat(np.arange(Q), np.diff(row_ptr[: Q + 1]))
        out.append(int((sizes[rows] * sizes[z["col_idx"][row_ptr[0]:row_ptr[Q]]]).sum()))
    return out


def flex_block_mask(z, header, layer, device="cuda"):
    """torch's BlockMask for `layer` (docs/formats.md, "FlexAttention")."""
    n, B, H = header["n"], header["block"], header["heads"]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    bits = np.unpackbits(z["bitmask"].view(np.uint8), bitorder="little").reshape(-1, B, B).astype(bool)
    bits = np.concatenate([bits, np.zeros((1, B, B), dtype=bool)])
    kind = block_kinds(z, header, layer).astype(np.int32)
    bits_t, kind_t = t(bits), t(kind)

    def mask_mod(b, h, q_idx, kv_idx):
        p = kind_t[h % H, q_idx // B, kv_idx // B]   # a one-head set broadcasts over the heads
        return (p == -2) | ((p >= 0) & bits_t[p.clamp(min=0), q_idx % B, kv_idx % B])

    kv = flex_kv_blocks(z, header, layer)
    return BlockMask.from_kv_blocks(
        t(kv["kv_num_blocks"][None]), t(kv["kv_indices"][None]),
        t(kv["full_kv_num_blocks"][None]), t(kv["full_kv_indices"][None]),
        BLOCK_SIZE=B, mask_mod=mask_mod, seq_lengths=(n, n))


def user_mask_mod(name, z, header):
    """FlexAttention as its users write it: the pattern's predicate as `mask_mod` on token indices,
    for create_block_mask to build at Flex's default 128-token blocks. Random blocks have no
    predicate: users precompute the block table and look it up, as here. Returns (mask_mod or None
    for dense, what it is), or None for a mask this table does not know."""
    B = header["block"]
    kind = name.split("-")[0]
    table = None
    if kind.startswith(("bigbird", "random")):
        table = torch.from_numpy(block_kinds(z, header, 0)[0] != -1).to("cuda")   # head 0; the files hold one head
    if kind.startswith("dense"):
        return None, "no mask (dense)"
    if kind == "causal":
        return (lambda b, h, q, k: q >= k), "q >= k"
    if kind.startswith("window256"):
        return (lambda b, h, q, k: (q - k).abs() <= 256), "abs(q - k) <= 256"
    if kind == "longformer":
        return (lambda b, h, q, k: ((q - k).abs() <= 256) | (q < 64) | (k < 64)), "abs(q - k) <= 256 | q < 64 | k < 64"
    if kind == "bigbird64":
        return (lambda b, h, q, k: ((q // B - k // B).abs() <= 1) | (q < 2 * B) | (k < 2 * B) | table[q // B, k // B]), \
            f"band and globals as predicates | the random blocks' table [{table.shape[0]} x {table.shape[1]}] looked up"
    if kind == "random10":
        return (lambda b, h, q, k: table[q // B, k // B]), f"the random blocks' table [{table.shape[0]} x {table.shape[1]}] looked up"
    return None


_create_block_mask = None


def create_block_mask_compiled(mask_mod, n):
    """create_block_mask compiled, at its default BLOCK_SIZE (128), as the FlexAttention docs advise
    for long sequences (torch 2.11 deprecates its _compile=True for torch.compile(create_block_mask);
    both build the same BlockMask)."""
    global _create_block_mask
    if _create_block_mask is None:
        _create_block_mask = torch.compile(create_block_mask)
    return _create_block_mask(mask_mod, None, None, n, n, device="cuda")


def median_ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def content_main(args):
    """The content-based heads (bench_content_cuda's CSV) against cuDNN dense and causal, timed here."""
    gpu = torch.cuda.get_device_name(0)
    H = args.heads
    with open(args.content_csv) as f:
        rows = list(csv.DictReader(f))
    cudnn = {}   # (n, d, causal) -> ms
    for n, d in sorted({(int(r["n"]), int(r["d"])) for r in rows}):
        g = torch.Generator(device="cuda").manual_seed(3)
        q, k, v = [torch.randn(1, H, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]
        for causal in (False, True):
            try:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
            except RuntimeError as e:
                print(f"SDPA cuDNN n={n} d={d} causal={causal}: not run ({str(e).splitlines()[0]})", flush=True)
                continue
            cudnn[(n, d, causal)] = ms
            print(f"SDPA cuDNN {'causal' if causal else 'dense'} n={n} d={d}: {ms:.3f} ms", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    lines = [f"GPU: {gpu}; bf16, batch 1, {H} heads; median times (CUDA events for sparsa, triton's do_bench for cuDNN). "
             "bucketing: hashing (lsh) or anchor cosines and the host's balanced assignment (anchors), the radix sort and "
             "the chunk ids; attention: the rounds' banded passes, which read Q, K, V through the sorted order (the gather "
             "is in their tile loads) and write O back at the tokens' positions (FAVOR+: its key and query passes); merge: "
             "the log-sum-exp merge of the passes. x cuDNN: cuDNN's time / sparsa's total, against cuDNN dense, or cuDNN "
             "causal for favor-causal.", "",
             "| family | n | d | bucketing ms | attention ms | merge ms | total ms | bucketing share | cuDNN dense ms | cuDNN causal ms | x cuDNN |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, d, total = int(r["n"]), int(r["d"]), float(r["total_ms"])
        causal = r["family"].startswith("favor-causal")
        dense_ms, causal_ms = cudnn.get((n, d, False)), cudnn.get((n, d, True))
        base = causal_ms if causal else dense_ms
        fmt = lambda x: "" if x is None else f"{x:.3f}"
        lines.append(f"| {r['family']} | {n} | {d} | {float(r['bucketing_ms']):.3f} | {float(r['attention_ms']):.3f} | "
                     f"{float(r['merge_ms']):.3f} | {total:.3f} | {100 * float(r['bucketing_ms']) / total:.1f}% | "
                     f"{fmt(dense_ms)} | {fmt(causal_ms)} | {'' if base is None else f'{base / total:.1f}'} |")
    table = "\n".join(lines)
    print("\n" + table)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, f"content-cuda-{slug}{args.suffix}.md")
    text = f"# Content-based heads on {gpu}\n\nCommand: `{args.command}` (torch {torch.__version__}).\n\n{table}\n"
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    if args.copy_to:
        shutil.copy(out, os.path.join(args.copy_to, os.path.basename(out)))


class Timer:
    """Median times. A case runs once untimed (compiling, on its first call), then once timed by CUDA
    events; under --slow-ms it is timed by triton's do_bench (median), else (dense and causal at
    n = 131,072) by the median of as many CUDA-event-timed calls as fit --case-budget-ms (at least 1,
    at most --slow-runs, the probe included), so that the whole run stays within minutes. Each slow
    case is printed and listed for the results file's notes."""

    def __init__(self, slow_ms, slow_runs, budget_ms):
        self.slow_ms, self.slow_runs, self.budget_ms = slow_ms, slow_runs, budget_ms
        self.slow = []   # "label (calls)" of the cases not timed by do_bench

    def events_ms(self, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def __call__(self, fn, label):
        """(median ms, how it was timed)."""
        fn()
        torch.cuda.synchronize()
        probe = self.events_ms(fn)
        if probe < self.slow_ms:
            return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"), "do_bench median"
        runs = max(1, min(self.slow_runs, int(self.budget_ms / probe)))
        times = [probe] + [self.events_ms(fn) for _ in range(runs - 1)]
        self.slow.append(f"{label} ({runs})")
        print(f"  {label}: {probe:.0f} ms a call: the median of {runs} CUDA-event-timed calls instead of do_bench "
              f"(--slow-ms {self.slow_ms:g}, --case-budget-ms {self.budget_ms:g})", flush=True)
        return statistics.median(times), f"median of {runs} calls (CUDA events)"


def dynamo_limits_raise():
    """One compile per mask, shape and requires_grad: far more than dynamo's default recompile limit
    (8). Past the limit dynamo would run flex_attention eagerly (n x n scores in memory); raise it,
    and make hitting it an error rather than a silent fallback (names differ across torch versions)."""
    cfg = torch._dynamo.config
    for name, value in (("recompile_limit", 512), ("cache_size_limit", 512), ("accumulated_recompile_limit", 8192),
                        ("accumulated_cache_size_limit", 8192), ("fail_on_recompile_limit_hit", True)):
        if hasattr(cfg, name):
            setattr(cfg, name, value)


def merge_read(path, passes, heads, d):
    """gpu_compare.py's JSON of an earlier run, to join: it must have timed other passes, same heads and d."""
    try:
        with open(path) as f:
            data = json.load(f)
        old = data["passes"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"gpu_compare: --merge {path}: cannot read ({e}) (give the .json an earlier run wrote in --copy-to)")
    if (data["heads"], data["d"]) != (heads, d):
        sys.exit(f"gpu_compare: --merge {path}: {data['heads']} heads, d = {data['d']}; this run has {heads}, d = {d} "
                 f"(merge runs of the same --heads and --d)")
    both = [p for p in passes if p in old]
    if both:
        sys.exit(f"gpu_compare: --merge {path}: that run timed {','.join(both)} too (give --passes the passes it lacks)")
    return data


def first_line(e):
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("masks", nargs="*")
    ap.add_argument("--sparsa-csv", default=None)
    ap.add_argument("--content-csv", default=None, help="bench_content_cuda's CSV: compare the content-based heads instead")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--passes", default="fwd,bwd,fwdbwd",
                    help="what PyTorch's peers time: fwd, bwd (backward alone), fwdbwd (forward + backward), comma-separated")
    ap.add_argument("--slow-ms", type=float, default=100.0, help="a call slower than this is not timed by do_bench")
    ap.add_argument("--slow-runs", type=int, default=5, help="at most this many timed calls for a slow case")
    ap.add_argument("--case-budget-ms", type=float, default=5000.0, help="a slow case gets as many calls as fit this")
    ap.add_argument("--merge", default=None, metavar="JSON",
                    help="the rows of an earlier run of other passes on this GPU (its .json in --copy-to), joined into this file")
    ap.add_argument("--command", default="python3 bench/gpu_compare.py ...")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--suffix", default="")
    ap.add_argument("--copy-to", default=None)
    args = ap.parse_args()
    if args.content_csv:
        content_main(args)
        return
    if not args.masks:
        ap.error("give mask files (or --content-csv)")
    passes = [p for p in args.passes.split(",") if p]
    if not passes or any(p not in gpu_report.PASSES for p in passes):
        ap.error(f"--passes {args.passes}: use some of fwd, bwd, fwdbwd, comma-separated (e.g. --passes bwd,fwdbwd)")
    for path in args.masks + ([args.sparsa_csv] if args.sparsa_csv else []):
        if not os.path.isfile(path):
            sys.exit(f"gpu_compare: {path}: no such file (compile the masks with `bench/run_gpu.sh masks`; "
                     f"the CSV comes from bench_cuda --csv)")
    sparsa_rows = gpu_report.sparsa_rows_read(args.sparsa_csv, args.d, args.heads) if args.sparsa_csv else []
    merged = merge_read(args.merge, passes, args.heads, args.d) if args.merge else None

    started_all = time.time()
    dynamo_limits_raise()
    gpu = torch.cuda.get_device_name(0)
    if merged is not None and merged["gpu"] != gpu:
        sys.exit(f"gpu_compare: --merge {args.merge}: timed on {merged['gpu']}, this is {gpu} (merge runs of one GPU only)")
    flex = torch.compile(flex_attention, dynamic=False)
    H, d = args.heads, args.d
    grads = "bwd" in passes or "fwdbwd" in passes
    timer = Timer(args.slow_ms, args.slow_runs, args.case_budget_ms)
    rows = []          # gpu_report's rows
    kept_ratio = {}    # mask name -> pairs in kept blocks / allowed pairs
    # lines for the results file (an earlier run's, less its line on its passes, which merging outdates)
    notes = [line for line in merged["notes"] if not line.startswith("Passes timed")] if merged else []
    skipped = []       # what was not run, and why

    def add(mask, key, n, impl, pass_, ms, pairs, family, how, block=None, peak=None):
        rows.append({"mask": mask, "key": key, "n": n, "impl": impl, "pass": pass_, "ms": ms, "pairs": pairs,
                     "family": family, "timing": how, "block": block, "peak_gib": peak})
        factor = gpu_report.PASS_FACTOR[pass_]
        print(f"{mask} n={n}: {impl}, {pass_}: {ms:.3f} ms, {factor * 4 * pairs * d / ms / 1e9:.0f} TFLOP/s"
              + ("" if peak is None else f", peak {peak:.2f} GiB"), flush=True)

    def qkv(n, seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return [torch.randn(1, H, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]

    def backward_after_fresh_forward(f, q, k, v, dout, warmup=2, runs=10):
        """Median ms of torch.autograd.grad alone (CUDA events around it), each after its own
        forward outside the events; and how it was timed."""
        times = []
        for i in range(warmup + runs):
            o_fresh = f(q, k, v)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.autograd.grad(o_fresh, (q, k, v), dout)
            stop.record()
            stop.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(stop))
        times.sort()
        return times[len(times) // 2], f"CUDA events around each backward, a fresh forward before each ({runs} runs)"

    def grads_time(f, q, k, v, label):
        """{pass: (ms, how, peak GiB)} for o = f(q, k, v): the backward alone (one forward outside the
        timer, then autograd.grad with retain_graph) and the forward + backward timed together."""
        out, wanted = {}, [p for p in ("bwd", "fwdbwd") if p in passes]
        for t in (q, k, v):
            t.requires_grad_(True)
        try:
            try:
                o = f(q, k, v)
                # dO in O's layout (cuDNN's O may not be contiguous in [1, heads, n, d] order)
                dout = torch.empty_like(o).normal_(generator=torch.Generator(device="cuda").manual_seed(4))
            except Exception as e:   # the forward with autograd refused: neither pass can run
                for pass_ in wanted:
                    skipped.append(f"{label} {pass_}: {first_line(e)}")
                print(f"{label} {'/'.join(wanted)}: not run ({first_line(e)})", flush=True)
                return out
            for pass_ in wanted:
                try:
                    if pass_ == "bwd":
                        torch.cuda.reset_peak_memory_stats()
                        try:
                            ms, how = timer(lambda: torch.autograd.grad(o, (q, k, v), dout, retain_graph=True), f"{label} bwd")
                        except RuntimeError as e:
                            # a compiled backward with donated buffers (FlexAttention on torch 2.11)
                            # runs once per forward: time each backward after a fresh, untimed forward
                            if "retain_graph" not in str(e):
                                raise
                            ms, how = backward_after_fresh_forward(f, q, k, v, dout)
                            notes.append(f"{label} bwd: {how}, since torch refused retain_graph=True on its compiled "
                                         f"backward ({first_line(e)[:80]})")
                    else:
                        o = None   # the first forward's graph and saved tensors go before this pass
                        torch.cuda.reset_peak_memory_stats()
                        ms, how = timer(lambda: torch.autograd.grad(f(q, k, v), (q, k, v), dout), f"{label} fwd+bwd")
                    out[pass_] = (ms, how, torch.cuda.max_memory_allocated() / 2 ** 30)
                except Exception as e:   # keep the other rows; say why this one is missing
                    skipped.append(f"{label} {pass_}: {first_line(e)}")
                    print(f"{label} {pass_}: not run ({first_line(e)})", flush=True)
                    torch.cuda.empty_cache()
        finally:
            for t in (q, k, v):
                t.requires_grad_(False)
        return out

    seen_n = []
    fair_grads = {}   # (predicate, n) -> (mask timed on, grads_time's result): the B128 twins share Flex's
    probed = False    # Flex's default tiles tried once on a block below 128
    for path in args.masks:
        z, header = load_masks(path)
        n, block, name = header["n"], header["block"], os.path.splitext(os.path.basename(path))[0]
        started = time.time()
        pairs = allowed_pairs(z, header)
        pairs = sum(pairs * H if len(pairs) == 1 else pairs)
        kept = kept_block_pairs(z, header)
        kept_ratio[name] = sum(kept * H if len(kept) == 1 else kept) / pairs
        q, k, v = qkv(n, 1)
        bm = flex_block_mask(z, header, 0)
        # Flex's default tiles on Hopper (H100, H200) with d = 128 are wider than 64 and must
        # divide the mask's block (torch 2.11 refuses 64 with them), so smaller blocks run with
        # tiles of the block.
        opts = {"BLOCK_M": block, "BLOCK_N": block} if block < 128 else None
        if opts is not None and not probed and "fwd" in passes:   # say what the defaults do with this block
            probed = True
            try:
                flex(q, k, v, block_mask=bm)
                torch.cuda.synchronize()
                note = f"FlexAttention with its default tiles on {name} (block {block}, d = {d}): ran"
            except Exception as e:
                note = (f"FlexAttention with its default tiles on {name} (block {block}, d = {d}): refused "
                        f"({first_line(e)}); the rows below run blocks under 128 with kernel_options BLOCK_M = "
                        f"BLOCK_N = the block")
            print(note, flush=True)
            notes.append(note)
        # the table-lookup Flex: the reference the fair row is checked against (unless the merged run
        # checked it on this GPU), timed (forward) as well
        checked = any(line.startswith(f"{name}: fair FlexAttention mask_mod = ") for line in notes)
        ref = None
        try:
            if "fwd" in passes or not checked:
                ref = flex(q, k, v, block_mask=bm, kernel_options=opts)
                torch.cuda.synchronize()
            if "fwd" in passes:
                ms, how = timer(lambda: flex(q, k, v, block_mask=bm, kernel_options=opts), f"{name} table Flex")
                add(name, name, n, f"FlexAttention, sparsa's tables on {block}-token tiles", "fwd", ms, pairs, "flex-table",
                    how, block)
        except Exception as e:   # keep the other rows; say why this one is missing
            ref = None
            skipped.append(f"{name}: table-lookup FlexAttention: {first_line(e)}")
            print(f"{name}: FlexAttention not run ({first_line(e)})", flush=True)
        # Flex as its users write it (the fair peer: every "x Flex" comes from this row).
        user = user_mask_mod(name, z, header)
        fair = "FlexAttention as users write it (predicate mask_mod, default blocks)"
        if user is not None:
            mask_mod, what = user
            try:
                if ref is None and not checked:
                    raise RuntimeError("no table-lookup Flex output to check it against (see above)")
                t0 = time.time()
                ubm = None if mask_mod is None else create_block_mask_compiled(mask_mod, n)
                torch.cuda.synchronize()
                build_s = time.time() - t0
                if ref is not None:
                    got = flex(q, k, v, block_mask=ubm)
                    err = (got.float() - ref.float()).abs().max().item()
                    scale = max(ref.float().abs().max().item(), 1.0)
                    del got
                    if not err <= 2e-2 * scale:   # the same attention, or the row is wrong
                        raise RuntimeError(f"differs from the table-lookup Flex by {err:.3g}: not the same mask")
                    ref = None   # not held through the timings (nor counted in their peak memory)
                if "fwd" in passes:
                    ms, how = timer(lambda: flex(q, k, v, block_mask=ubm), f"{name} fair Flex")
                    add(name, name, n, fair, "fwd", ms, pairs, "flex", how, block)
                if not checked:
                    notes.append(f"{name}: fair FlexAttention mask_mod = {what}; create_block_mask (compiled, 128-token "
                                 f"blocks) {build_s:.2f} s with its compile, not in the time; max |O - O(table Flex)| {err:.2g}")
                if grads:
                    first, result = fair_grads.get((what, n), (name, None))
                    if result is None:
                        result = grads_time(lambda a, b, c: flex(a, b, c, block_mask=ubm), q, k, v, f"{name} fair Flex")
                        fair_grads[(what, n)] = (name, result)
                    for pass_, (ms, how, peak) in result.items():
                        add(name, name, n, fair + ("" if first == name else f", timed on {first}"), pass_, ms, pairs,
                            "flex", how, block, peak)
            except Exception as e:
                skipped.append(f"{name}: fair FlexAttention: {first_line(e)}")
                print(f"{name}: fair FlexAttention not run ({first_line(e)})", flush=True)
                notes.append(f"{name}: fair FlexAttention not run ({first_line(e)})")
        if n not in seen_n:
            seen_n.append(n)
        del q, k, v, bm, ref
        torch.cuda.empty_cache()
        print(f"[{name}: {time.time() - started:.0f} s]", flush=True)

    for n in seen_n:
        started = time.time()
        q, k, v = qkv(n, 2)
        for causal in (False, True):
            pairs = H * (n * (n + 1) // 2 if causal else n * n)
            case = "causal" if causal else "dense"
            f = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal)
            for backend, label, family in ((SDPBackend.CUDNN_ATTENTION, "SDPA cuDNN", "sdpa-cudnn"),
                                           (SDPBackend.FLASH_ATTENTION, "SDPA FlashAttention-2", "sdpa-fa2")):
                with sdpa_kernel(backend):
                    if "fwd" in passes:
                        try:
                            ms, how = timer(lambda: f(q, k, v), f"{label} {case} n={n}")
                            add(case, f"{case}-{n}", n, label, "fwd", ms, pairs, family, how)
                        except RuntimeError as e:
                            skipped.append(f"{label} {case} n={n} fwd: {first_line(e)}")
                            print(f"{label} {case} n={n}: not run ({first_line(e)})", flush=True)
                            continue
                    if grads:
                        for pass_, (ms, how, peak) in grads_time(f, q, k, v, f"{label} {case} n={n}").items():
                            add(case, f"{case}-{n}", n, label, pass_, ms, pairs, family, how, None, peak)
        del q, k, v
        torch.cuda.empty_cache()
        print(f"[SDPA n={n}: {time.time() - started:.0f} s]", flush=True)

    rows += sparsa_rows
    run = f"passes {','.join(passes)}"
    if timer.slow:
        notes.append(f"Timed as the median of the calls in brackets (CUDA events), not by do_bench, because one call "
                     f"took over {args.slow_ms:g} ms (as many calls as fit {args.case_budget_ms:g} ms, at most "
                     f"{args.slow_runs}; {run}): " + "; ".join(timer.slow) + ".")
    if skipped:
        notes.append(f"Not run ({run}): " + "; ".join(skipped) + ".")
    command, all_passes = args.command, passes
    if merged is not None:   # the earlier run's PyTorch rows for its passes; sparsa's from this run's CSV
        # (the earlier run's sparsa rows too when this run has no CSV)
        rows += [r for r in merged["rows"] if (r["pass"] not in passes and r["family"] != "sparsa")
                 or (r["family"] == "sparsa" and not sparsa_rows)]
        kept_ratio = {**merged["kept_ratio"], **kept_ratio}
        all_passes = [p for p in gpu_report.PASSES if p in passes or p in merged["passes"]]
        command = f"{merged['command']} (passes {','.join(merged['passes'])}), then {args.command} ({run})"
    if sorted(all_passes) != sorted(gpu_report.PASSES):
        notes.append(f"Passes timed for PyTorch's peers: {', '.join(all_passes)} (--passes).")
    data = {"gpu": gpu, "command": command, "torch": torch.__version__, "heads": H, "d": d, "passes": all_passes,
            "notes": notes, "kept_ratio": kept_ratio, "rows": rows}
    text = gpu_report.report(data)
    print("\n" + text)

    # a run of some passes only goes to its own file, never over the full run's
    partial = "" if sorted(all_passes) == sorted(gpu_report.PASSES) else "-" + "-".join(all_passes)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, f"cuda-{slug}{args.suffix}{partial}.md")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    if args.copy_to:
        os.makedirs(args.copy_to, exist_ok=True)
        if os.path.abspath(args.copy_to) != os.path.abspath(args.out_dir):
            shutil.copy(out, os.path.join(args.copy_to, os.path.basename(out)))
        rows_json = os.path.join(args.copy_to, os.path.splitext(os.path.basename(out))[0] + ".json")
        with open(rows_json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {rows_json} (python3 bench/gpu_report.py {rows_json} rebuilds the Markdown)")
    if skipped:
        print(f"not run: {len(skipped)} case(s), listed in the file's notes")
    print(f"gpu_compare: {time.time() - started_all:.0f} s in all")


if __name__ == "__main__":
    main()
