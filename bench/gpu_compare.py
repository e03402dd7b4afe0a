#!/usr/bin/env python3
"""sparsa's CUDA kernels against PyTorch on the same GPU, in the same run.

For each mask file (sparsa .npz, one head repeated to --heads heads): FlexAttention compiled with
torch.compile, twice: as its users write it (the pattern's predicate as mask_mod, create_block_mask
compiled at its default 128-token blocks, random blocks as a looked-up table; every "x Flex" is
against this row), and on the mask's own Flex arrays looked up per pair (docs/formats.md,
"FlexAttention"; shown, labelled, not compared against), and for every n
seen, scaled_dot_product_attention with the cuDNN and FlashAttention backends, dense and causal.
Times are medians (triton.testing.do_bench), inputs random bf16 [1, heads, n, d]. Rates count
allowed pairs only: 4 * pairs * d FLOPs; the column "on kept blocks" counts every pair of the
kept blocks instead (partial blocks whole), the work a block-sparse kernel does. Prints one Markdown table with sparsa's rows (from
bench_cuda --csv) and writes it to OUT_DIR/cuda-<gpu>.md with the command and the GPU's name.

    python3 bench/gpu_compare.py MASK.npz... --sparsa-csv sparsa.csv [--heads 16] [--d 128]
            [--command TEXT] [--out-dir bench/results] [--suffix TEXT] [--copy-to DIR]

--suffix goes after the GPU's name in the file name (cuda-<gpu><suffix>.md), e.g. -d64.

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("masks", nargs="*")
    ap.add_argument("--sparsa-csv", default=None)
    ap.add_argument("--content-csv", default=None, help="bench_content_cuda's CSV: compare the content-based heads instead")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--d", type=int, default=128)
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

    torch._dynamo.config.cache_size_limit = 64   # one compile per mask shape; never fall back to eager
    gpu = torch.cuda.get_device_name(0)
    flex = torch.compile(flex_attention, dynamic=False)
    H, d = args.heads, args.d
    rows = []        # (case, n, kernel, ms, tflops, pairs, mask name)
    cudnn_dense = {}  # n -> TFLOP/s
    kept_ratio = {}   # mask name -> pairs in kept blocks / allowed pairs

    def qkv(n, seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return [torch.randn(1, H, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]

    seen_n = []
    notes = []        # lines for the results file
    probed = False    # Flex's default tiles tried once on a block below 128
    for path in args.masks:
        z, header = load_masks(path)
        n, name = header["n"], os.path.splitext(os.path.basename(path))[0]
        pairs = allowed_pairs(z, header)
        pairs = pairs * H if len(pairs) == 1 else pairs
        pairs = sum(pairs)
        kept = kept_block_pairs(z, header)
        kept_ratio[name] = sum(kept * H if len(kept) == 1 else kept) / pairs
        q, k, v = qkv(n, 1)
        started = time.time()
        bm = flex_block_mask(z, header, 0)
        # Flex's default tiles on Hopper (H100, H200) with d = 128 are wider than 64 and must
        # divide the mask's block (torch 2.11 refuses 64 with them), so smaller blocks run with
        # tiles of the block.
        opts = {"BLOCK_M": header["block"], "BLOCK_N": header["block"]} if header["block"] < 128 else None
        if opts is not None and not probed:   # say what the defaults do with this block, in this run
            probed = True
            try:
                flex(q, k, v, block_mask=bm)
                torch.cuda.synchronize()
                note = f"FlexAttention with its default tiles on {name} (block {header['block']}, d = {d}): ran"
            except Exception as e:
                note = (f"FlexAttention with its default tiles on {name} (block {header['block']}, d = {d}): refused "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the rows below run blocks under 128 "
                        f"with kernel_options BLOCK_M = BLOCK_N = the block")
            print(note, flush=True)
            notes.append(note)
        try:
            flex(q, k, v, block_mask=bm, kernel_options=opts)
            torch.cuda.synchronize()
            ms = median_ms(lambda: flex(q, k, v, block_mask=bm, kernel_options=opts))
        except Exception as e:   # keep the other rows; say why this one is missing
            print(f"{name}: FlexAttention not run ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)
            ms = None
        if ms is not None:
            rows.append((name, n, f"FlexAttention, sparsa's tables on {header['block']}-token tiles", ms,
                         4 * pairs * d / ms / 1e9, pairs, name))
            print(f"{name}: flex (table lookup) {ms:.3f} ms (compile and first run {time.time() - started:.0f} s)", flush=True)
        # Flex as its users write it (the fair peer: every "x Flex" comes from this row).
        user = user_mask_mod(name, z, header)
        if user is not None:
            mask_mod, what = user
            try:
                started = time.time()
                ubm = None if mask_mod is None else create_block_mask_compiled(mask_mod, n)
                torch.cuda.synchronize()
                build_s = time.time() - started
                ref = flex(q, k, v, block_mask=bm, kernel_options=opts).float()
                got = flex(q, k, v, block_mask=ubm).float()
                err = (got - ref).abs().max().item()
                if not err <= 2e-2 * max(ref.abs().max().item(), 1.0):   # the same attention, or the row is wrong
                    raise RuntimeError(f"differs from the table-lookup Flex by {err:.3g}: not the same mask")
                ums = median_ms(lambda: flex(q, k, v, block_mask=ubm))
                rows.append((name, n, "FlexAttention as users write it (predicate mask_mod, default blocks)", ums,
                             4 * pairs * d / ums / 1e9, pairs, name))
                notes.append(f"{name}: fair FlexAttention mask_mod = {what}; create_block_mask (compiled, "
                             f"128-token blocks) {build_s:.2f} s with its compile, not in the time; max |O - O(table Flex)| {err:.2g}")
                print(f"{name}: flex (as users write it) {ums:.3f} ms; mask built in {build_s:.2f} s", flush=True)
            except Exception as e:
                print(f"{name}: fair FlexAttention not run ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)
                notes.append(f"{name}: fair FlexAttention not run ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        if n not in seen_n:
            seen_n.append(n)
        del q, k, v, bm
        torch.cuda.empty_cache()

    for n in seen_n:
        q, k, v = qkv(n, 2)
        for causal in (False, True):
            pairs = H * (n * (n + 1) // 2 if causal else n * n)
            for backend, label in ((SDPBackend.CUDNN_ATTENTION, "SDPA cuDNN"), (SDPBackend.FLASH_ATTENTION, "SDPA FlashAttention-2")):
                try:
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                except RuntimeError as e:
                    print(f"{label} n={n}: not run ({str(e).splitlines()[0]})")
                    continue
                tf = 4 * pairs * d / ms / 1e9
                case = "causal" if causal else "dense"
                rows.append((case, n, label, ms, tf, pairs, f"{case}-{n}"))
                if label == "SDPA cuDNN" and not causal:
                    cudnn_dense[n] = tf
                print(f"{label} {case} n={n}: {ms:.3f} ms, {tf:.0f} TFLOP/s", flush=True)
        del q, k, v
        torch.cuda.empty_cache()

    if args.sparsa_csv and os.path.exists(args.sparsa_csv):
        with open(args.sparsa_csv) as f:
            for r in csv.DictReader(f):
                auto = " (auto)" if r.get("chosen_by") == "auto" else ""
                rows.append((r["mask"], int(r["n"]), f"sparsa kernel {r['kernel']}{auto}", float(r["median_ms"]),
                             float(r["tflops"]), int(r["pairs"]), r["mask"]))

    flex_ms = {r[6]: r[3] for r in rows if r[2].startswith("FlexAttention as users")}
    order = {}
    for r in rows:
        order.setdefault(r[6], len(order))
    rows.sort(key=lambda r: (r[1], order[r[6]], r[2]))
    lines = [f"GPU: {gpu}; bf16, batch 1, {H} heads, d = {d}; median times; TFLOP/s on allowed pairs (4 * pairs * d).",
             "x Flex: the time of FlexAttention as users write it (the pattern's predicate as mask_mod, create_block_mask "
             "compiled at its default 128-token blocks, random blocks as a precomputed table) / this time on the same "
             "mask (> 1: faster than Flex); the table-lookup Flex row (sparsa's block tables on the mask's own tiles) "
             "is shown but not compared against; "
             "/ cuDNN dense: this rate / cuDNN's dense rate at the same n; on kept blocks: the rate counting every "
             "pair of the kept blocks (partial blocks whole).", "",
             "| mask | n | density | implementation | ms | TFLOP/s | on kept blocks | x Flex | / cuDNN dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, n, impl, ms, tf, pairs, key in rows:
        density = pairs / (H * n * n)
        xf = f"{flex_ms[key] / ms:.2f}" if key in flex_ms else ""
        xc = f"{tf / cudnn_dense[n]:.2f}" if n in cudnn_dense else ""
        kb = f"{tf * kept_ratio[key]:.1f}" if key in kept_ratio else ""
        lines.append(f"| {name} | {n} | {density:.4f} | {impl} | {ms:.3f} | {tf:.1f} | {kb} | {xf} | {xc} |")
    table = "\n".join(lines)
    print("\n" + table)

    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, f"cuda-{slug}{args.suffix}.md")
    text = (f"# CUDA engine on {gpu}\n\nCommand: `{args.command}` (torch {torch.__version__}).\n\n"
            + "".join(f"{line}\n\n" for line in notes) + f"{table}\n")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    if args.copy_to:
        shutil.copy(out, os.path.join(args.copy_to, os.path.basename(out)))


if __name__ == "__main__":
    main()
