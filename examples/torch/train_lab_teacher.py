"""Trains the causal lab teacher (learn/teacher.hpp) with PyTorch, on a GPU or the CPU, and saves it in
the C++ trainer's checkpoint format, so that `sparsa learn ruler --teachers FILE` evaluates it.

The model, the task streams, the initial weights and the schedule are those of
`sparsa learn teacher` (sparsa.lab; docs/lab-torch.md): the options below have its names and
defaults. Every 10 steps a progress line (step, loss, answer accuracy, tokens/s, seconds per step),
every --eval-every steps the validation accuracy per task; training stops at --stop-accuracy,
--steps or --max-minutes; then a summary with the median time per step, and the file.

    PYTHONPATH=build/python /usr/bin/python3 examples/torch/train_lab_teacher.py --n 1024 --steps 200 -o teacher.bin
    PYTHONPATH=build-torch-gpu/python python3 examples/torch/train_lab_teacher.py --device cuda --n 65536 \\
        --curriculum 4096,16384 -o teacher-n65536.bin

On CUDA the model runs under bfloat16 autocast by default, so that sparsa.torch.attention gets q, k, v
in bfloat16 (its tensor-core kernels: head width 64 or 128). --attention sdpa runs PyTorch's
scaled_dot_product_attention instead (for speed comparisons; the checkpoint is the same model).
--curriculum N1,N2,...: train at each of these shorter lengths first (each until --stop-accuracy or
--stage-minutes), then at --n, as `sparsa learn teacher --from` does by hand; --max-minutes bounds
all stages together.
"""
import argparse
import os
import sys
import time

import torch

import sparsa
import sparsa.lab as lab


def arguments():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="ruler", help="ruler (the four needle tasks and mqar in turn), single, multikey, "
                   "multivalue, multiquery, mqar, passkey or mix")
    p.add_argument("--n", type=int, default=1024, help="sequence length (16 to 65536)")
    p.add_argument("--needles", type=int, default=4)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=0, help="0: d / heads")
    p.add_argument("--kv-heads", type=int, default=0, help="0: as many as heads; else it must divide --heads")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--mlp", type=int, default=256)
    p.add_argument("--positions", choices=["none", "rotary", "sinusoidal"], default="none")
    p.add_argument("--bidirectional", action="store_true", help="the first, non-causal teacher")
    p.add_argument("--qk-identity", type=float, default=0.0)
    p.add_argument("--from", dest="from_file", help="go on training this checkpoint at --n and --task (the model options are its)")
    p.add_argument("--curriculum", default="", help="shorter lengths to train at first, e.g. 4096,16384")
    p.add_argument("--stage-minutes", type=float, default=2.0, help="the most each --curriculum stage trains")
    p.add_argument("--steps", type=int, default=3000, help="at most, per stage")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=0,
                   help="sequences per forward (the same gradient, less memory); 0: at most 262,144 tokens")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--later-lr", type=float, default=0.0,
                   help="the rate of every --curriculum stage after the first (0: --lr); docs/learn.md's curriculum used 1e-3")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=1, help="the initial weights and the training stream")
    p.add_argument("--stop-accuracy", type=float, default=0.98)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-sequences", type=int, default=64)
    p.add_argument("--max-minutes", type=float, default=19.0,
                   help="the most all stages train together (0: no limit); the last gets what the others left")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="bfloat16 autocast (default on cuda) or float32 (cpu)")
    p.add_argument("--attention", choices=["sparsa", "sdpa"], default="sparsa")
    p.add_argument("--threads", type=int, default=0, help="sparsa's CPU threads and torch's (0: their defaults)")
    p.add_argument("-o", "--output", default="teacher.bin")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: torch {torch.__version__} sees no CUDA device here (use --device cpu)")
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    try:
        a.curriculum = [int(x) for x in a.curriculum.split(",") if x.strip()]
    except ValueError:
        p.error(f"--curriculum {a.curriculum!r}: give lengths separated by commas, e.g. 4096,16384")
    if any(m >= a.n for m in a.curriculum):
        p.error(f"--curriculum {a.curriculum}: each stage must be shorter than --n {a.n}")
    if a.from_file and any(f"--{o}" in sys.argv for o in ("d", "heads", "head-dim", "kv-heads", "layers", "mlp", "positions",
                                                             "bidirectional", "qk-identity")):
        p.error("--from: the model options are the checkpoint's (leave out --d, --heads, --head-dim, --kv-heads, --layers, "
                "--mlp, --positions, --bidirectional, --qk-identity)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(a.output))):
        p.error(f"-o {a.output}: the folder does not exist")
    return a


def stage_task(a, teacher, n):
    """The task at length n (keys, values and fillers are the model's: they fix its vocabulary)."""
    task = dict(teacher.task, kind=a.task, n=n, pairs=a.pairs, queries=a.queries, needles=a.needles)
    lab.task_check(task)
    return task


def main():
    a = arguments()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.from_file:
        teacher = lab.LabTeacher.load(a.from_file, attention=a.attention, threads=a.threads)
    else:
        teacher = lab.LabTeacher.new(task=a.task, n=a.n, pairs=a.pairs, queries=a.queries, needles=a.needles, d=a.d,
                                     heads=a.heads, head_dim=a.head_dim, kv_heads=a.kv_heads, layers=a.layers, mlp=a.mlp,
                                     causal=not a.bidirectional, positions=a.positions, qk_identity=a.qk_identity,
                                     seed=a.seed, attention=a.attention, threads=a.threads)
    m = teacher.model
    if a.device == "cuda" and a.dtype == "bfloat16" and a.attention == "sparsa" and m["head_width"] not in (64, 128):
        sys.exit(f"train_lab_teacher.py: head width {m['head_width']} on cuda in bfloat16: sparsa's tensor-core kernels "
                 "take 64 or 128 (give --d and --heads, or --head-dim, so; or --dtype float32, slowly)")
    teacher.to(a.device)
    count = sum(p.numel() for p in teacher.parameters())
    where = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"teacher: {teacher.extra_repr()}, {count:,} parameters; {where}, {a.dtype}, torch {torch.__version__}", flush=True)
    progress = None if a.quiet else (lambda line: print(line, flush=True))
    start = time.perf_counter()

    for stage, n in enumerate(a.curriculum + [a.n]):
        rate = a.later_lr if stage > 0 and a.later_lr > 0 else a.lr
        teacher.task = stage_task(a, teacher, n)
        micro = a.micro_batch or max(1, min(a.batch, 262144 // n))
        left = 60 * a.max_minutes - (time.perf_counter() - start) if a.max_minutes > 0 else float("inf")
        seconds = max(1.0, left if n == a.n else min(60 * a.stage_minutes, left))   # at least one step per stage
        print(f"stage n = {n}: batch {a.batch} ({micro} per forward), lr {rate:g}, at most {a.steps} steps, "
              + ("no time limit" if seconds == float("inf") else f"{seconds / 60:.2f} minutes"), flush=True)
        r = lab.train(teacher, steps=a.steps, batch=a.batch, lr=rate, warmup=a.warmup, eval_every=a.eval_every,
                      eval_sequences=a.eval_sequences, stop_accuracy=a.stop_accuracy, seed=a.seed,
                      max_seconds=0 if seconds == float("inf") else seconds, dtype=a.dtype, micro_batch=micro,
                      progress=progress)
        kinds = ", ".join(f"{k} {v:.4f}" for k, v in r["validation_by_kind"].items())
        print(f"n = {n}: trained {r['steps']} steps in {r['seconds']:.1f} s ({r['tokens_per_second']:.0f} tokens/s, "
              f"median step {r['seconds_per_step']:.3f} s), stopped at {r['stopped']}: loss {r['first_loss']:.4f} -> "
              f"{r['last_loss']:.4f}; validation accuracy {r['validation_accuracy']:.4f} ({kinds})", flush=True)

    teacher.save(a.output)
    print(f"wrote {a.output} (n = {a.n}; evaluate it with: sparsa learn ruler --teachers {a.output})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except sparsa.Error as e:
        sys.exit(f"train_lab_teacher.py: {e}")
