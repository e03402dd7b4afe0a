"""A small causal language model in plain PyTorch whose attention is sparsa.torch.attention with a
pattern script, or PyTorch's dense SDPA, trained on associative recall; the loss of every step goes
to a CSV so that two runs can be laid side by side (README.md in this folder has the commands).

The task (multi-query associative recall): a sequence lists `pairs` key-value pairs, then asks
`queries` of the keys again; after each asked key the model must give that key's value. Keys and
values are drawn afresh for every sequence, so only attention back to the pair can answer:

    k3 v7  k0 v2  k9 v9 ... | k0 -> v2   k9 -> v9 ...      (the loss counts the answers alone)

    PYTHONPATH=build/python /usr/bin/python3 examples/torch/train_tiny_lm.py \\
        --attention sparsa --pattern examples/torch/dense_causal.pat --csv sparsa.csv
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
    p.add_argument("--threads", type=int, default=0, help="sparsa's CPU threads and torch's (0: their defaults)")
    p.add_argument("--csv", default="loss.csv", help="where the per-step log goes (step, loss, accuracy, seconds)")
    a = p.parse_args()
    if a.attention == "sparsa" and not a.pattern:
        p.error("--attention sparsa needs --pattern (e.g. examples/torch/dense_causal.pat)")
    if a.attention == "sparsa" and a.device == "cuda":
        p.error("--attention sparsa runs on the CPU only so far (sparsa.torch's GPU path is issue 15's next part); "
                "use --device cpu, or --attention sdpa on the GPU")
    if a.dim % a.heads:
        p.error(f"--dim {a.dim} is not a multiple of --heads {a.heads}")
    if a.pairs > a.keys or a.queries > a.pairs:
        p.error("need queries <= pairs <= keys (each sequence uses distinct keys)")
    return a


def batch_make(a, g):
    """tokens [batch, n] and targets [batch, n] (-100 where the loss does not count).
    Tokens: keys 0..keys-1, values keys..2*keys-1; n = 2 * (pairs + queries)."""
    b = a.batch
    keys = torch.argsort(torch.rand(b, a.keys, generator=g), dim=1)[:, :a.pairs]          # distinct keys per row
    values = a.keys + torch.randint(0, a.keys, (b, a.pairs), generator=g)
    asked = torch.argsort(torch.rand(b, a.pairs, generator=g), dim=1)[:, :a.queries]      # which pairs are asked
    context = torch.stack([keys, values], dim=2).reshape(b, 2 * a.pairs)
    questions = torch.stack([keys.gather(1, asked), values.gather(1, asked)], dim=2).reshape(b, 2 * a.queries)
    tokens = torch.cat([context, questions], dim=1)
    targets = torch.full_like(tokens, -100)
    # The model at an asked key's position predicts the next token: that key's value.
    targets[:, 2 * a.pairs::2] = questions[:, 1::2]
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
        masks = sparsa.compile_file(text, n)
    else:
        masks = sparsa.compile(text.replace("\\n", "\n"), n)
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
    n, vocab = 2 * (a.pairs + a.queries), 2 * a.keys
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
    print(f"{what}: {a.layers} layers x {a.heads} heads, dim {a.dim}, n {n}, batch {a.batch}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, torch {torch.__version__}, {a.device}")
    start = time.perf_counter()
    with open(a.csv, "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["step", "loss", "accuracy", "seconds"])
        for step in range(1, a.steps + 1):
            tokens, targets = (t.to(a.device) for t in batch_make(a, data))
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
    print(f"wrote {a.csv}")


if __name__ == "__main__":
    main()
