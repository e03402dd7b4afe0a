"""sparsa.torch under DistributedDataParallel: two processes (gloo, localhost) train a tiny causal
model whose attention is sparsa.torch.attention with a causal window, each on half of a global
batch; after a few SGD steps both ranks hold the same parameters, equal to one process trained on
the whole batch, and the attention's projections have moved (its gradients reached them).
Skipped only where PyTorch is missing. The file is also the workers' program:
    python3 test_torch_ddp.py worker RANK WORLD PORT OUT.pt
"""
import os
import socket
import subprocess
import sys

import pytest

import sparsa

try:
    import torch
    import torch.nn.functional as F
    import sparsa.torch as st
except ImportError:  # only torch can be missing: sparsa itself comes from the build
    torch = None

SCRIPT = "heads 2\ncausal\nattend = window(left = 7, right = 0) | columns(first(2))"
N, VOCAB, DIM, HEADS, MLP = 40, 16, 32, 2, 64
GLOBAL_BATCH, STEPS, LR = 4, 4, 0.5
TIMEOUT_S = 120


def model_make():
    """The same initial parameters in every process (DDP also broadcasts rank 0's)."""
    torch.manual_seed(0)
    masks = sparsa.compile(SCRIPT, n=N, block=16)

    class TinyLM(torch.nn.Module):
        """Embedding, one pre-norm attention layer (sparsa), an MLP, logits. tokens [batch, n] -> [batch, n, vocab]."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, DIM)
            self.position = torch.nn.Parameter(0.1 * torch.randn(N, DIM))
            self.norm1, self.norm2 = torch.nn.LayerNorm(DIM), torch.nn.LayerNorm(DIM)
            self.qkv, self.proj = torch.nn.Linear(DIM, 3 * DIM), torch.nn.Linear(DIM, DIM)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, MLP), torch.nn.GELU(), torch.nn.Linear(MLP, DIM))
            self.out = torch.nn.Linear(DIM, VOCAB)

        def forward(self, tokens):
            b, n = tokens.shape
            x = self.embed(tokens) + self.position
            # [b, n, 3, heads, d] -> three [b, heads, n, d] views (not contiguous: sparsa.torch takes any strides)
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
            a = st.attention(q, k, v, masks, threads=1)
            x = x + self.proj(a.transpose(1, 2).reshape(b, n, DIM))
            x = x + self.mlp(self.norm2(x))
            return self.out(x)

    return TinyLM()


def batch(step):
    """The global batch of step `step`: [GLOBAL_BATCH, N + 1] tokens, the same in every process."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, N + 1), generator=g)


def train(model, rows):
    """STEPS steps of SGD on rows `rows` of each global batch (next-token cross entropy, mean)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        tokens = batch(step)[rows]
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def worker(rank, world, port, out):
    import datetime
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    model = torch.nn.parallel.DistributedDataParallel(model_make())
    share = GLOBAL_BATCH // world
    train(model, slice(rank * share, (rank + 1) * share))
    torch.save({name: p.detach().clone() for name, p in model.module.named_parameters()}, out)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed for this Python (apt install python3-torch); "
                    "sparsa.torch's tests need it")
def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    world = 2
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    port = free_port()
    outs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    workers = [subprocess.Popen([sys.executable, __file__, "worker", str(r), str(world), str(port), str(outs[r])],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for r in range(world)]
    logs = []
    try:
        for w in workers:
            logs.append(w.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for r, (w, log) in enumerate(zip(workers, logs)):
        assert w.returncode == 0, f"rank {r} exited with {w.returncode}:\n{log}"
    ranks = [torch.load(o) for o in outs]

    initial = {name: p.detach().clone() for name, p in model_make().named_parameters()}
    single = model_make()
    train(single, slice(0, GLOBAL_BATCH))
    for name, p in single.named_parameters():
        # DDP all-reduces the gradients, so both ranks take the same steps, bit for bit.
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        # One process on the whole batch: the same steps, up to the order of float32 sums.
        assert torch.allclose(ranks[0][name], p.detach(), rtol=1e-4, atol=1e-6), \
            (name, (ranks[0][name] - p.detach()).abs().max().item())
        assert not torch.equal(p.detach(), initial[name]), f"{name} did not move"


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
