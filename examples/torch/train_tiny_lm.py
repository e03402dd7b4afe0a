"""A small causal language model in plain PyTorch whose attention is sparsa.torch.attention with a
pattern script, or PyTorch's dense SDPA, trained on associative recall; the loss of every step goes
to a CSV so that two runs can be laid side by side (README.md in this folder has the commands).

The task (multi-query associative recall): a sequence lists `pairs` key-value pairs, then
`filler` tokens of noise (none by default), then asks `queries` of the keys again; after each asked
key the model must give that key's value. Keys, values and filler are drawn afresh for every
sequence, so only attention back to the pair can answer:

    k3 v7  k0 v2  k9 v9 ... | f5 f1 f1 ... | k0 -> v2   k9 -> v9 ...      (the loss counts the answers alone)

    PYTHONPATH=build/python /usr/bin/python3 examples/torch/train_tiny_lm.py \\
        --attention sparsa --pattern examples/torch/dense_causal.pat --csv sparsa.csv

On a GPU (--device cuda) the model runs under bfloat16 autocast by default, so that q, k and v reach
sparsa.torch.attention (and SDPA) in bfloat16: the CUDA engine's tensor-core kernels, which need a
head dimension (--dim / --heads) of 64 or 128 and mask blocks of 64 or more (--block 64 overrides the
script's `block`). README.md in this folder has the GPU run.
"""
import argparse
import csv
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import sparsa
import sparsa.torch


def arguments():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", choices=["sparsa", "sdpa"], default="sparsa",
                   help="sparsa: sparsa.torch.attention with --pattern; sdpa: PyTorch's dense causal attention")
    p.add_argument("--pattern", help="a pattern script: a .pat file, or the script's text ('\\n' separates lines); "
                   "it must be causal and have --heads heads (a script with fewer layers than --layers repeats its last)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=1, help="the model's initial weights and the data")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="model width (heads * head dimension)")
    p.add_argument("--keys", type=int, default=16, help="distinct keys (and as many distinct values)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--filler", type=int, default=0, help="noise tokens between the pairs and the questions")
    p.add_argument("--block", type=int, default=0, help="the masks' block size (0: the script's `block`)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast (the default on cuda: tensor cores); float32 (the default on cpu)")
    p.add_argument("--threads", type=int, default=0, help="sparsa's CPU threads and torch's (0: their defaults)")
    p.add_argument("--csv", default="loss.csv", help="where the per-step log goes (step, loss, accuracy, seconds)")
    a = p.parse_args()
    if a.attention == "sparsa" and not a.pattern:
        p.error("--attention sparsa needs --pattern (e.g. examples/torch/dense_causal.pat)")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: torch {torch.__version__} sees no CUDA device here (use --device cpu)")
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    if a.dtype == "bfloat16" and a.device == "cuda" and a.attention == "sparsa" and a.dim // a.heads not in (64, 128):
        p.error(f"--dtype bfloat16 on cuda: the head dimension --dim / --heads = {a.dim // a.heads} must be 64 or 128 "
                "(sparsa's tensor-core kernels); e.g. --dim 256 --heads 4, or --dtype float32")
    if a.filler < 0:
        p.error(f"--filler {a.filler} is negative")
    if a.dim % a.heads:
        p.error(f"--dim {a.dim} is not a multiple of --heads {a.heads}")
    if a.pairs > a.keys or a.queries > a.pairs:
        p.error("need queries <= pairs <= keys (each sequence uses distinct keys)")
    return a


def batch_make(a, g):
    """tokens [batch, n] and targets [batch, n] (-100 where the loss does not count).
    Tokens: keys 0..keys-1, values keys..2*keys-1, filler 2*keys..3*keys-1 (only with --filler);
    n = 2 * (pairs + queries) + filler."""
    b = a.batch
    keys = torch.argsort(torch.rand(b, a.keys, generator=g), dim=1)[:, :a.pairs]          # distinct keys per row
    values = a.keys + torch.randint(0, a.keys, (b, a.pairs), generator=g)
    asked = torch.argsort(torch.rand(b, a.pairs, generator=g), dim=1)[:, :a.queries]      # which pairs are asked
    context = torch.stack([keys, values], dim=2).reshape(b, 2 * a.pairs)
    questions = torch.stack([keys.gather(1, asked), values.gather(1, asked)], dim=2).reshape(b, 2 * a.queries)
    parts = [context, questions]
    if a.filler:   # drawn last, and only here: without filler the batches are those of earlier versions
        parts.insert(1, 2 * a.keys + torch.randint(0, a.keys, (b, a.filler), generator=g))
    tokens = torch.cat(parts, dim=1)
    targets = torch.full_like(tokens, -100)
    # The model at an asked key's position predicts the next token: that key's value.
    targets[:, 2 * a.pairs + a.filler::2] = questions[:, 1::2]
    return tokens, targets


class Block(torch.nn.Module):
    """Pre-norm attention and MLP, each with a residual; x [batch, n, dim]."""

    def __init__(self, a, attend):
        super().__init__()
        self.heads, self.attend = a.heads, attend
        self.norm1, self.norm2 = torch.nn.LayerNorm(a.dim), torch.nn.LayerNorm(a.dim)
        self.qkv, self.proj = torch.nn.Linear(a.dim, 3 * a.dim), torch.nn.Linear(a.dim, a.dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(a.dim, 4 * a.dim), torch.nn.GELU(), torch.nn.Linear(4 * a.dim, a.dim))

    def forward(self, x):
        b, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(self.attend(q, k, v).transpose(1, 2).reshape(b, n, dim))   # q, k, v, o: [b, heads, n, d]
        return x + self.mlp(self.norm2(x))


class TinyLM(torch.nn.Module):
    """tokens [batch, n] -> logits [batch, n, vocab]; attends(l) is layer l's attention function."""

    def __init__(self, a, n, vocab, attends):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, a.dim)
        self.position = torch.nn.Parameter(0.02 * torch.randn(n, a.dim))
        self.blocks = torch.nn.ModuleList(Block(a, attends(l)) for l in range(a.layers))
        self.norm = torch.nn.LayerNorm(a.dim)
        self.out = torch.nn.Linear(a.dim, vocab)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


def sdpa_dense(q, k, v):
    """Dense causal attention: PyTorch's SDPA where it has one (2.0+); before it, the same math."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    n = q.shape[2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def pattern_compile(a, n):
    """The MaskSet of --pattern at sequence length n, checked against the model: its heads, and no
    query allowed a later key (a causal LM that saw its answer would learn nothing)."""
    text = a.pattern
    if os.path.exists(text):
        masks = sparsa.compile_file(text, n, block=a.block)
    else:
        masks = sparsa.compile(text.replace("\\n", "\n"), n, block=a.block)
    if masks.heads != a.heads:
        sys.exit(f"--pattern: the script has {masks.heads} heads but the model --heads {a.heads} "
                 f"(write `heads {a.heads}` in the script, or pass --heads {masks.heads})")
    for l in range(masks.layers):
        for h in range(masks.heads):
            if masks.to_dense(l, h)[torch.ones(n, n, dtype=torch.bool).triu(1).numpy()].any():
                sys.exit(f"--pattern: layer {l}, head {h} lets a query see later tokens "
                         "(a causal language model needs `causal` in the script)")
    return masks


def main():
    a = arguments()
    if a.threads:
        torch.set_num_threads(a.threads)
    n, vocab = 2 * (a.pairs + a.queries) + a.filler, (3 if a.filler else 2) * a.keys
    if a.attention == "sparsa":
        masks = pattern_compile(a, n)
        print(f"sparsa: {masks}, density {100 * masks.density:.1f}%")

        def attends(l):
            layer = min(l, masks.layers - 1)
            return lambda q, k, v: sparsa.torch.attention(q, k, v, masks, layer=layer, threads=a.threads)
        what = f"sparsa.torch.attention ({os.path.basename(a.pattern) if os.path.exists(a.pattern) else 'script'})"
    else:
        def attends(l):
            return sdpa_dense
        what = "SDPA" if hasattr(F, "scaled_dot_product_attention") else "dense causal softmax (torch < 2.0 has no SDPA)"
    torch.manual_seed(a.seed)
    model = TinyLM(a, n, vocab, attends).to(a.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    data = torch.Generator().manual_seed(a.seed + 1)
    device = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"{what}: {a.layers} layers x {a.heads} heads, dim {a.dim}, n {n}, batch {a.batch}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, torch {torch.__version__}, {device}, {a.dtype}")
    # bfloat16: the weights stay float32 and autocast runs the products (and so q, k, v) in bfloat16.
    autocast = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
    start = time.perf_counter()
    with open(a.csv, "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["step", "loss", "accuracy", "seconds"])
        for step in range(1, a.steps + 1):
            tokens, targets = (t.to(a.device) for t in batch_make(a, data))
            with autocast:
                logits = model(tokens)
                loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            answered = targets != -100
            accuracy = (logits.argmax(-1)[answered] == targets[answered]).float().mean().item()
            seconds = time.perf_counter() - start
            log.writerow([step, f"{loss.item():.6f}", f"{accuracy:.4f}", f"{seconds:.2f}"])
            if step % 50 == 0 or step == 1 or step == a.steps:
                print(f"step {step:5d}  loss {loss.item():.4f}  accuracy {accuracy:.3f}  {seconds:.1f} s", flush=True)
    print(f"wrote {a.csv}: {a.steps} steps in {seconds:.1f} s ({1000 * seconds / a.steps:.1f} ms a step)")


if __name__ == "__main__":
    main()
