"""sparsa.lab: the causal lab teacher of learn/teacher.hpp in PyTorch, for training on the GPU at
n = 4,096 to 65,536; its checkpoints are the C++ trainer's (teacher.bin, version 2), both ways.

    import torch, sparsa.lab as lab
    t = lab.LabTeacher.new(task="ruler", n=4096, seed=1)          # the C++ trainer's initial weights
    report = lab.train(t, steps=3000, batch=16, device="cuda")    # its streams, schedule and early stopping
    t.save("teacher-seed1.bin")                                   # sparsa learn ruler --teachers teacher-seed1.bin

The forward is the C++ teacher's (learn/teacher.cpp, SequencePass::run), for tokens [batch, n]:
    x   = tok_emb[t_i] + prev_emb[t_(i-1)] (i > 0) (+ the sinusoidal table, for those positions)
    per layer: h1 = LN1(x); q = h1 wq, k = h1 wk, v = h1 wv (rotary on q and k); x2 = x + attn(q, k, v) wo
               h2 = LN2(x2); x = x2 + gelu_tanh(h2 w1 + b1) w2 + b2
    logits = LNf(x) w_out + b_out;  loss = mean cross entropy over the answer positions
with layer norms of eps 1e-5, attention scale 1 / sqrt(head width), grouped-query heads (query head
h reads key/value head h // (heads // kv_heads)), rotary pairs (2j, 2j + 1) of each head turned by
i * 10000^(-2j / head width). docs/lab-torch.md has the commands; docs/learn.md the file format.

Attention runs through sparsa.torch.attention with the causal MaskSet the C++ teacher uses
(sparsa.learn.causal_masks: blocks of 64 from n = 64), or, for speed comparisons, PyTorch's SDPA
(attention="sdpa"; the plain softmax where torch has no SDPA, as Debian's 1.13).

Index
  [SECTION] checkpoint   the header, the parameter slots, load and save (byte for byte the C++ format)
  [SECTION] model        LabTeacher
  [SECTION] data         task batches from the C++ generator (sparsa.learn.task_batch)
  [SECTION] training     evaluate() and train(): the C++ trainer's schedule, streams and early stopping
"""

import json
import math
import os
import struct
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import sparsa
import sparsa.torch as _sparsa_torch

if not sparsa.learn_built:
    raise ImportError("sparsa.lab needs sparsa.learn (the task generator and the checkpoint checksum), which this "
                      "build lacks: configure with learn/ (the default) and rebuild the module")

__all__ = ["LabTeacher", "checkpoint_read", "checkpoint_write", "evaluate", "task_batch", "train", "FORMAT_VERSION"]

FORMAT_VERSION = 2                 # learn/teacher.hpp, kTeacherFormatVersion
_MAGIC = b"SPTEACH\n"
_LAYER_NORM_EPS = 1e-5
_POSITIONS = ("rotary", "none", "sinusoidal")

# [SECTION] checkpoint


def _fail(path, what):
    return sparsa.Error(f"{path}: {what}")


def param_slots(model):
    """[(name, rows, cols)] in the checkpoint's order (learn/teacher.cpp, teacher_param_slots)."""
    d, vocab, mlp = model["d"], model["vocab"], model["mlp"]
    qw, kvw = model["heads"] * model["head_width"], model["kv_heads"] * model["head_width"]
    slots = [("tok_emb", vocab, d), ("prev_emb", vocab, d)]
    for l in range(model["layers"]):
        p = f"layers.{l}."
        slots += [(p + "ln1_g", 1, d), (p + "ln1_b", 1, d), (p + "wq", d, qw), (p + "wk", d, kvw), (p + "wv", d, kvw),
                  (p + "wo", qw, d), (p + "ln2_g", 1, d), (p + "ln2_b", 1, d), (p + "w1", d, mlp), (p + "b1", 1, mlp),
                  (p + "w2", mlp, d), (p + "b2", 1, d)]
    return slots + [("lnf_g", 1, d), ("lnf_b", 1, d), ("w_out", d, vocab), ("b_out", 1, vocab)]


def model_check(model):
    """Raises sparsa.Error naming the field for a shape the C++ teacher refuses (teacher_config_check).
    model: the header's "model" with head_width and kv_heads resolved (> 0)."""
    def fail(what):
        raise sparsa.Error(f"teacher: {what}")
    for key in ("vocab", "d", "heads", "head_width", "kv_heads", "layers", "mlp"):
        if isinstance(model[key], bool) or not isinstance(model[key], int):
            fail(f"{key} = {model[key]!r} must be an integer")
    if model["vocab"] < 2:
        fail(f"vocab = {model['vocab']} must be at least 2")
    for key, lo, hi in (("d", 2, 1024), ("heads", 1, 256), ("head_width", 1, 256), ("layers", 1, 64), ("mlp", 1, 8192)):
        if not lo <= model[key] <= hi:
            fail(f"{key} = {model[key]} is out of range ({lo} to {hi})")
    if model["kv_heads"] < 1 or model["heads"] % model["kv_heads"]:
        fail(f"kv_heads = {model['kv_heads']} must divide heads = {model['heads']}")
    if model["positions"] not in _POSITIONS:
        fail(f"unknown positions {model['positions']!r} (use rotary, none or sinusoidal)")
    if model["positions"] == "rotary" and model["head_width"] % 2:
        fail(f"rotary positions turn pairs of dimensions: the head width {model['head_width']} must be even")
    if not isinstance(model["causal"], bool):
        fail(f"causal = {model['causal']!r} must be true or false")


def task_check(task):
    """Raises sparsa.Error (the C++ task_config_check's message) for a task that cannot make sequences."""
    task_batch(task, "validation", 0, 1)


def _header_text(model, task):
    """The JSON header as nlohmann::json::dump() writes it: compact, keys sorted, floats as shortest round trip."""
    header = {"format": "sparsa.teacher", "version": FORMAT_VERSION,
              "model": {k: model[k] for k in ("vocab", "d", "heads", "head_width", "kv_heads", "layers", "mlp", "causal",
                                              "positions", "qk_identity", "sharpness", "own_block")},
              "task": {k: task[k] for k in ("kind", "n", "pairs", "queries", "keys", "values", "fillers", "needles")}}
    for key in ("qk_identity", "sharpness", "own_block"):
        header["model"][key] = float(header["model"][key])
    return json.dumps(header, separators=(",", ":"), sort_keys=True)


def checkpoint_write(path, model, task, params):
    """Writes a version-2 checkpoint atomically (a temporary file in the same folder, then renamed):
    magic, uint32 version, uint32 header length, the header, uint64 count, the parameters as
    little-endian float64, uint64 FNV-1a 64 of every byte before it. params: float64 [count]."""
    params = np.ascontiguousarray(params, dtype="<f8")
    count = sum(r * c for _, r, c in param_slots(model))
    if params.shape != (count,):
        raise sparsa.Error(f"{path}: {params.size} parameters, the model needs {count} (a bug: LabTeacher builds them)")
    text = _header_text(model, task).encode()
    body = b"".join([_MAGIC, struct.pack("<II", FORMAT_VERSION, len(text)), text, struct.pack("<Q", count), params.tobytes()])
    data = body + struct.pack("<Q", sparsa.learn.fnv1a64(body))
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".teacher-", dir=folder)
    except OSError as e:
        raise _fail(path, f"cannot write it ({e.strerror}: is the folder there and writable?)") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkpoint_read(path):
    """(model, task, params float64 [count]) of a checkpoint, version 1 or 2, as learn/teacher.cpp's
    teacher_load reads it (version 1: bidirectional, sinusoidal, d / heads per head). Raises
    sparsa.Error naming the file for a missing, foreign, truncated, corrupt or other-version file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _fail(path, f"cannot read it ({e.strerror})") from None
    if len(data) < 8 or data[:8] != _MAGIC:
        raise _fail(path, "not a sparsa teacher checkpoint (write one with 'sparsa learn teacher -o FILE' or LabTeacher.save)")
    if len(data) < 8 + 4 + 4 + 8 + 8:
        raise _fail(path, f"truncated checkpoint ({len(data)} bytes): train it again")
    version, text_size = struct.unpack_from("<II", data, 8)
    if not 1 <= version <= FORMAT_VERSION:
        raise _fail(path, f"checkpoint version {version} is not one this sparsa reads (1 to {FORMAT_VERSION})"
                    + (": update sparsa" if version > FORMAT_VERSION else ": train it again"))
    body = len(data) - 8
    if sparsa.learn.fnv1a64(data[:body]) != struct.unpack_from("<Q", data, body)[0]:
        raise _fail(path, "checksum mismatch: the checkpoint is corrupt or truncated (train it again with "
                    "'sparsa learn teacher' or sparsa.lab.train)")
    if 16 + text_size + 8 > body:
        raise _fail(path, "header runs past the end of the file: the checkpoint is corrupt")
    try:
        header = json.loads(data[16:16 + text_size].decode())
        m, t = header["model"], header["task"]
        model = {k: m[k] for k in ("vocab", "d", "heads", "layers", "mlp")}
        if version >= 2:
            model.update({k: m[k] for k in ("head_width", "kv_heads", "causal", "positions")})
        else:
            model.update(head_width=model["d"] // model["heads"], kv_heads=model["heads"], causal=False,
                         positions="sinusoidal")
        for key in ("qk_identity", "sharpness", "own_block"):
            model[key] = float(m.get(key, 0.0))
        task = {k: t[k] for k in ("kind", "n", "pairs", "queries", "keys", "values", "fillers")}
        task["needles"] = t["needles"] if version >= 2 else 4
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise _fail(path, f"bad header: {what}") from None
    try:
        model_check(model)
        task_check(task)
    except sparsa.Error as e:
        raise _fail(path, str(e)) from None
    if model["vocab"] != task["fillers"] + task["keys"] + task["values"] + 2:
        raise _fail(path, f"the model's vocab {model['vocab']} is not the task's (fillers + keys + values + 2): the checkpoint is corrupt")
    count = struct.unpack_from("<Q", data, 16 + text_size)[0]
    wanted = sum(r * c for _, r, c in param_slots(model))
    if count != wanted or 16 + text_size + 8 + 8 * count != body:
        raise _fail(path, f"holds {count} parameters, the header's model needs {wanted}: the checkpoint is corrupt")
    params = np.frombuffer(data, dtype="<f8", count=count, offset=16 + text_size + 8).astype(np.float64)
    return model, task, params


# [SECTION] model


def _task_default(task="ruler", n=1024, pairs=8, queries=8, keys=32, values=32, fillers=16, needles=4):
    return {"kind": task, "n": n, "pairs": pairs, "queries": queries, "keys": keys, "values": values, "fillers": fillers,
            "needles": needles}


class _Layer(torch.nn.Module):
    def __init__(self, d, q_width, kv_width, mlp):
        super().__init__()
        p = lambda *shape: torch.nn.Parameter(torch.zeros(*shape))  # noqa: E731  (filled by load or new)
        self.ln1_g, self.ln1_b = p(d), p(d)
        self.wq, self.wk, self.wv, self.wo = p(d, q_width), p(d, kv_width), p(d, kv_width), p(q_width, d)
        self.ln2_g, self.ln2_b = p(d), p(d)
        self.w1, self.b1, self.w2, self.b2 = p(d, mlp), p(mlp), p(mlp, d), p(d)


class LabTeacher(torch.nn.Module):
    """The C++ teacher's model (learn/teacher.hpp) as a torch module; its weights are [in, out] as
    the checkpoint stores them (x @ w). model, task: the checkpoint header's dicts (docs/learn.md).

    attention: "sparsa" (sparsa.torch.attention under the causal MaskSet, the C++ teacher's own
    blocks: 64 from n = 64, else 16) or "sdpa" (torch's scaled_dot_product_attention, the plain
    softmax on a torch without it). threads: sparsa's CPU engine threads (0: all cores).
    Build one with LabTeacher.new(...) (the C++ initial weights) or LabTeacher.load(path).
    """

    def __init__(self, model, task, attention="sparsa", threads=0):
        super().__init__()
        if attention not in ("sparsa", "sdpa"):
            raise ValueError(f"LabTeacher: attention must be 'sparsa' or 'sdpa', not {attention!r}")
        model_check(model)
        self.model, self.task = dict(model), dict(task)
        self.attention, self.threads = attention, threads
        d, hw = model["d"], model["head_width"]
        self.tok_emb = torch.nn.Parameter(torch.zeros(model["vocab"], d))
        self.prev_emb = torch.nn.Parameter(torch.zeros(model["vocab"], d))
        self.layers = torch.nn.ModuleList(_Layer(d, model["heads"] * hw, model["kv_heads"] * hw, model["mlp"])
                                          for _ in range(model["layers"]))
        self.lnf_g, self.lnf_b = torch.nn.Parameter(torch.ones(d)), torch.nn.Parameter(torch.zeros(d))
        self.w_out, self.b_out = torch.nn.Parameter(torch.zeros(d, model["vocab"])), torch.nn.Parameter(torch.zeros(model["vocab"]))
        self._masks = {}    # n -> MaskSet
        self._tables = {}   # (kind, n, device) -> position tables

    # --- construction and files

    @classmethod
    def new(cls, task="ruler", n=1024, pairs=8, queries=8, keys=32, values=32, fillers=16, needles=4, d=128, heads=2,
            head_dim=0, kv_heads=0, layers=2, mlp=256, causal=True, positions="none", qk_identity=0.0, seed=1,
            attention="sparsa", threads=0):
        """An untrained teacher with the initial weights `sparsa learn teacher --seed` starts from
        (sparsa.learn.teacher_init); the defaults are the lab model's (teacher_config_default)."""
        cpp = sparsa.learn.teacher_init(task=task, n=n, pairs=pairs, queries=queries, keys=keys, values=values,
                                        fillers=fillers, needles=needles, d=d, heads=heads, head_dim=head_dim,
                                        kv_heads=kv_heads, layers=layers, mlp=mlp, causal=causal, positions=positions,
                                        qk_identity=qk_identity, seed=seed)
        model = {"vocab": cpp.vocab, "d": d, "heads": heads, "head_width": cpp.head_dim, "kv_heads": cpp.kv_heads,
                 "layers": layers, "mlp": mlp, "causal": causal, "positions": positions, "qk_identity": float(qk_identity),
                 "sharpness": 0.0, "own_block": 0.0}
        t = cls(model, _task_default(task, n, pairs, queries, keys, values, fillers, needles), attention, threads)
        t.params_set(cpp.params)
        return t

    @classmethod
    def load(cls, path, dtype=torch.float32, attention="sparsa", threads=0):
        """A checkpoint of `sparsa learn teacher` or LabTeacher.save (docs/learn.md, "Checkpoint
        format"), its parameters cast to `dtype` (float64 keeps them bit for bit)."""
        model, task, params = checkpoint_read(path)
        t = cls(model, task, attention, threads).to(dtype)
        t.params_set(params)
        return t

    def save(self, path):
        """Writes the checkpoint (version 2) atomically: the parameters as float64, the header with
        this model and task (task["n"]: the length it was trained at)."""
        checkpoint_write(os.fspath(path), self.model, self.task, self.params_get())

    def _slot_tensors(self):
        named = dict(self.named_parameters())
        return [(named[name], rows, cols) for name, rows, cols in param_slots(self.model)]

    def params_get(self):
        """Every parameter in the checkpoint's order: float64 numpy [count]."""
        return np.concatenate([p.detach().to("cpu", torch.float64).reshape(-1).numpy() for p, _, _ in self._slot_tensors()])

    @torch.no_grad()
    def params_set(self, flat):
        """Sets every parameter from the checkpoint's order. flat: float64 [count]."""
        flat = torch.as_tensor(np.asarray(flat, dtype=np.float64))
        at = 0
        for p, rows, cols in self._slot_tensors():
            p.copy_(flat[at:at + rows * cols].reshape(p.shape))
            at += rows * cols
        if at != flat.numel():
            raise ValueError(f"LabTeacher.params_set: {flat.numel()} values, the model has {at} parameters")

    # --- forward

    def _position_tables(self, kind, n, device):
        """rotary: (cos, sin) float32 [n, head_width / 2]; sinusoidal: [n, d] float32. Computed in float64 as the C++ does."""
        key = (kind, n, str(device))
        if key not in self._tables:
            i = np.arange(n, dtype=np.float64)[:, None]
            if kind == "rotary":
                hw = self.model["head_width"]
                freq = np.power(10000.0, -2.0 * np.arange(hw // 2, dtype=np.float64) / hw)
                table = tuple(torch.from_numpy(f(i * freq)).float().to(device) for f in (np.cos, np.sin))
            else:
                d = self.model["d"]
                j = np.arange(d)
                freq = np.power(10000.0, -(j - j % 2).astype(np.float64) / d)
                pe = np.where(j % 2 == 0, np.sin(i * freq), np.cos(i * freq))
                table = torch.from_numpy(pe).float().to(device)
            self._tables[key] = table
        return self._tables[key]

    def _rotary(self, x):
        """x: [batch, n, heads, head_width]; pairs (2j, 2j + 1) turned by angle i * 10000^(-2j / hw), in float32."""
        cos, sin = self._position_tables("rotary", x.shape[1], x.device)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        xf = x.float()
        a, b = xf[..., 0::2], xf[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)

    def masks(self, n):
        """The MaskSet of every layer at length n: the causal teacher's dense causal mask (or dense, bidirectional)."""
        if n not in self._masks:
            block = 64 if n >= 64 else 16
            heads = self.model["heads"]
            self._masks[n] = (sparsa.learn.causal_masks(n, heads, block) if self.model["causal"]
                              else sparsa.compile(f"heads {heads}\nattend = dense", n=n, block=block))
        return self._masks[n]

    def _attend(self, q, k, v):
        """q: [batch, heads, n, hw]; k, v: [batch, kv_heads, n, hw] -> o [batch, heads, n, hw]."""
        if self.attention == "sparsa":
            return _sparsa_torch.attention(q, k, v, self.masks(q.shape[2]), 0, threads=self.threads)
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.model["causal"])
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])   # no SDPA (torch < 2.0): the plain softmax
        if self.model["causal"]:
            n = q.shape[2]
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v

    def forward(self, tokens, attend=None):
        """tokens: int [batch, n] (any n; the checkpoint's task n is the length it was trained at) -> logits [batch, n, vocab].

        attend: None, or a callable (layer, q, k, v) -> o [batch, heads, n, head width] run in place of
        each layer's causal attention (q: [batch, heads, n, hw]; k, v: [batch, kv_heads, n, hw], after
        the rotary turn): how sparsa.ruler puts a selector's masks into the model."""
        m = self.model
        batch, n = tokens.shape
        d, heads, kv, hw = m["d"], m["heads"], m["kv_heads"], m["head_width"]
        tokens = tokens.long()
        x = self.tok_emb[tokens] + F.pad(self.prev_emb[tokens[:, :-1]], (0, 0, 1, 0))   # the token shift: row 0 has no previous token
        if m["positions"] == "sinusoidal":
            x = x + self._position_tables("sinusoidal", n, x.device)
        for index, layer in enumerate(self.layers):
            h1 = F.layer_norm(x, (d,), layer.ln1_g, layer.ln1_b, _LAYER_NORM_EPS)
            q = (h1 @ layer.wq).view(batch, n, heads, hw)
            k = (h1 @ layer.wk).view(batch, n, kv, hw)
            v = (h1 @ layer.wv).view(batch, n, kv, hw)
            if m["positions"] == "rotary":
                q, k = self._rotary(q), self._rotary(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            o = self._attend(q, k, v) if attend is None else attend(index, q, k, v)   # [batch, heads, n, hw]
            x2 = x + o.transpose(1, 2).reshape(batch, n, heads * hw) @ layer.wo
            h2 = F.layer_norm(x2, (d,), layer.ln2_g, layer.ln2_b, _LAYER_NORM_EPS)
            x = x2 + F.gelu(h2 @ layer.w1 + layer.b1, approximate="tanh") @ layer.w2 + layer.b2
        return F.layer_norm(x, (d,), self.lnf_g, self.lnf_b, _LAYER_NORM_EPS) @ self.w_out + self.b_out

    def extra_repr(self):
        m = self.model
        return (f"{'causal' if m['causal'] else 'bidirectional'}, {m['layers']} layers x {m['heads']} heads "
                f"({m['kv_heads']} key/value heads) of width {m['head_width']}, d {m['d']}, mlp {m['mlp']}, "
                f"{m['positions']} positions; task {self.task['kind']}, n {self.task['n']}; attention {self.attention}")


# [SECTION] data


def task_batch(task, stream, first, count, seed=1, n=None):
    """Sequences first .. first + count - 1 of `stream` ('train' with training seed `seed`,
    'validation', 'test') from the C++ generator: a dict of tokens, targets, depth (int [count, n]),
    kind (int32 [count], an index into sparsa.learn.task_kinds()). n: the task's when None."""
    t = dict(task, n=task["n"] if n is None else n)
    return sparsa.learn.task_batch(task=t["kind"], n=t["n"], stream=stream, seed=seed, first=first, count=count,
                                   pairs=t["pairs"], queries=t["queries"], keys=t["keys"], values=t["values"],
                                   fillers=t["fillers"], needles=t["needles"])


# [SECTION] training


def _autocast(device, dtype):
    """bfloat16 autocast on CUDA (sparsa's tensor-core kernels); nothing otherwise."""
    if dtype == "bfloat16" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(teacher, data, micro_batch=0, dtype="float32"):
    """Loss and accuracy of the teacher on a task_batch dict: {loss, accuracy, answers, by_kind:
    {name: accuracy}} (accuracy: argmax == target over the answers, as TeacherResult counts)."""
    device = next(teacher.parameters()).device
    tokens, targets = torch.from_numpy(data["tokens"]), torch.from_numpy(data["targets"]).long()
    step = micro_batch or tokens.shape[0]
    loss_sum, hits = 0.0, []
    for b in range(0, tokens.shape[0], step):
        t = targets[b:b + step].to(device)
        with _autocast(device, dtype):
            logits = teacher(tokens[b:b + step].to(device)).float()
        loss_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-1,
                                    reduction="sum").item()
        hits.append((logits.argmax(-1) == t).cpu())
    hits = torch.cat(hits)
    answer = targets >= 0
    answers = int(answer.sum())
    by_kind = {}
    kinds = sparsa.learn.task_kinds()
    for k in np.unique(data["kind"]):
        rows = torch.from_numpy(data["kind"] == k)
        a = answer[rows]
        if int(a.sum()):
            by_kind[kinds[k]] = float(hits[rows][a].float().mean())
    return {"loss": loss_sum / max(answers, 1), "accuracy": float(hits[answer].float().mean()) if answers else 0.0,
            "answers": answers, "by_kind": by_kind}


def train(teacher, steps=3000, batch=16, lr=2e-3, warmup=100, clip=1.0, eval_every=100, eval_sequences=64,
          stop_accuracy=0.98, seed=1, max_seconds=0.0, device=None, dtype=None, micro_batch=0, progress=print):
    """Trains `teacher` in place as learn/teacher.cpp's teacher_train does (the defaults are
    `sparsa learn teacher`'s): step s reads training-stream sequences s * batch .. of seed `seed`;
    Adam (0.9, 0.98, eps 1e-8), linear warmup over `warmup` steps then cosine decay to lr / 10 at
    `steps`; the global gradient norm clipped to `clip`; every `eval_every` steps (and at the last)
    the accuracy on `eval_sequences` validation-stream sequences, stopping once it reaches
    `stop_accuracy`, or after `max_seconds` (0: no limit). No attention-shaping terms (the C++
    trainer's --sharpness, --own-block). device: the teacher's when None; dtype "bfloat16"
    (autocast: the default on CUDA) or "float32". micro_batch > 0 splits each batch (the same
    gradient, less memory). progress: a function of one line, or None.

    Returns {steps, seconds, first_loss, last_loss (means over the first and last 10 steps),
    validation_accuracy, validation_loss, validation_by_kind, seconds_per_step (median),
    tokens_per_second, stopped ("accuracy", "steps" or "time")}.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"train: steps = {steps} and batch = {batch} must be at least 1")
    task_batch(teacher.task, "train", 0, 1, seed)   # refuses a seed that is the validation or test stream's
    if device is not None:
        teacher.to(device)
    device = next(teacher.parameters()).device
    dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    n = teacher.task["n"]
    held_out = task_batch(teacher.task, "validation", 0, eval_sequences)
    opt = torch.optim.Adam(teacher.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8)
    losses, step_times, report = [], [], {"stopped": "steps"}
    start = time.perf_counter()
    micro = micro_batch or batch

    def measure():
        teacher.eval()
        r = evaluate(teacher, held_out, micro, dtype)
        teacher.train()
        report.update(validation_accuracy=r["accuracy"], validation_loss=r["loss"], validation_by_kind=r["by_kind"])

    teacher.train()
    for step in range(steps):
        t0 = time.perf_counter()
        data = task_batch(teacher.task, "train", step * batch, batch, seed)
        tokens, targets = torch.from_numpy(data["tokens"]), torch.from_numpy(data["targets"]).long()
        answers = max(int((targets >= 0).sum()), 1)
        opt.zero_grad(set_to_none=True)
        loss_sum, correct = 0.0, 0
        for b in range(0, batch, micro):
            t = targets[b:b + micro].to(device, non_blocking=True)
            with _autocast(device, dtype):
                logits = teacher(tokens[b:b + micro].to(device, non_blocking=True)).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-1, reduction="sum") / answers
            loss.backward()
            loss_sum += loss.item()
            correct += int(((logits.argmax(-1) == t) & (t >= 0)).sum())
        # the global norm clipped as the C++ does (scale clip / norm above clip; no epsilon)
        grads = [p.grad for p in teacher.parameters() if p.grad is not None]
        norm = float(torch.sqrt(sum(g.double().square().sum() for g in grads)))
        if norm > clip:
            for g in grads:
                g.mul_(clip / norm)
        if step < warmup:
            rate = lr * (step + 1) / warmup
        else:
            s = (step - warmup) / max(1, steps - warmup)
            rate = lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * s)))
        for group in opt.param_groups:
            group["lr"] = rate
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        losses.append(loss_sum)
        step_times.append(seconds)
        report["steps"] = step + 1
        eval_now = (step + 1) % eval_every == 0 or step + 1 == steps
        if eval_now:
            measure()
        if progress and (eval_now or step % 10 == 0):
            line = (f"step {step + 1:5d}/{steps}  loss {loss_sum:.4f}  acc {correct / answers:.3f}  "
                    f"tokens/s {batch * n / seconds:.0f}  s/step {seconds:.3f}")
            if eval_now:
                kinds = ", ".join(f"{k} {a:.3f}" for k, a in report["validation_by_kind"].items())
                line += f"  validation acc {report['validation_accuracy']:.4f} ({kinds})"
            progress(line)
        if eval_now and report["validation_accuracy"] >= stop_accuracy:
            report["stopped"] = "accuracy"
            break
        if max_seconds > 0 and time.perf_counter() - start > max_seconds:
            if not eval_now:
                measure()
            report["stopped"] = "time"
            break
    report["seconds"] = time.perf_counter() - start
    k = min(10, len(losses))
    report["first_loss"] = sum(losses[:k]) / k
    report["last_loss"] = sum(losses[-k:]) / k
    report["seconds_per_step"] = sorted(step_times)[len(step_times) // 2]
    report["tokens_per_second"] = report["steps"] * batch * n / report["seconds"]
    return report
