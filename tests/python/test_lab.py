"""sparsa.lab: the PyTorch lab teacher against the C++ teacher (learn/teacher.cpp). A checkpoint the
C++ trainer wrote gives the same log probabilities in PyTorch as in the C++ forward, and one PyTorch
wrote gives the same in C++; the file round-trips byte for byte; the PyTorch trainer takes the C++
trainer's steps (same data, initial weights, schedule and optimizer); bad files are refused naming
the file. Runs on torch 1.13's CPU in a few seconds (tiny models at n = 64 and 128)."""
import json
import re
import struct

import numpy as np
import pytest

import sparsa

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not sparsa.learn_built, reason="learn/ is not built in this tree")

if sparsa.learn_built:
    import sparsa.lab as lab

# float32 in PyTorch against the C++ forward (double, with float32 attention): the log
# probabilities (magnitudes up to about 10) agree within 2e-5 absolute. Measured: about 1e-6; the
# exact GELU in place of the tanh one (a bug to catch) gives 2.5e-4.
TOLERANCE = 2e-5

TINY = dict(task="single", n=64, needles=1, d=32, heads=4, head_dim=16, layers=2, mlp=32)


def cpp_teacher(positions, kv_heads, causal=True, seed=2, head_dim=16):
    """A C++ teacher trained a few steps (its weights away from the initial ones)."""
    t, report = sparsa.learn.train_teacher(**dict(TINY, head_dim=head_dim), kv_heads=kv_heads, positions=positions, causal=causal,
                                           steps=3, batch=4, lr=0.05, seed=seed, stop_accuracy=1.01)
    assert report["steps"] == 3
    return t


def torch_log_probs(model, tokens):
    with torch.no_grad():
        return torch.log_softmax(model(torch.from_numpy(tokens)[None]).double(), -1)[0].numpy()


def assert_close(got, want):
    err = np.abs(got - want).max()
    assert err <= TOLERANCE, f"max difference {err}"


@pytest.mark.parametrize("positions, kv_heads, causal", [("rotary", 2, True), ("none", 1, True), ("sinusoidal", 4, False)])
def test_cpp_checkpoint_gives_the_cpp_forward(tmp_path, positions, kv_heads, causal):
    t = cpp_teacher(positions, kv_heads, causal)
    path = tmp_path / "cpp.bin"
    t.save(str(path))
    model = lab.LabTeacher.load(path)
    assert (model.model["positions"], model.model["kv_heads"], model.model["causal"]) == (positions, kv_heads, causal)
    tokens = lab.task_batch(model.task, "test", 3, 1)["tokens"][0]
    assert_close(torch_log_probs(model, tokens), t.log_probs(tokens))
    # the same file read in float64 and written back is the same file, byte for byte
    again = tmp_path / "again.bin"
    lab.LabTeacher.load(path, dtype=torch.float64).save(again)
    assert again.read_bytes() == path.read_bytes()


def test_version_1_loads_as_the_cpp_reads_it(tmp_path):
    # A version 1 file (the first teacher: no head_width, kv_heads, causal, positions, needles) is
    # bidirectional with sinusoidal positions and d / heads per head, in both readers.
    t = cpp_teacher("sinusoidal", 4, causal=False, head_dim=0)   # d / heads = 8, as version 1 had
    t.save(str(tmp_path / "v2.bin"))
    model, task, params = lab.checkpoint_read(tmp_path / "v2.bin")
    header = {"format": "sparsa.teacher", "version": 1,
              "model": {k: model[k] for k in ("vocab", "d", "heads", "layers", "mlp", "qk_identity", "sharpness", "own_block")},
              "task": {k: task[k] for k in ("kind", "n", "pairs", "queries", "keys", "values", "fillers")}}
    text = json.dumps(header).encode()
    body = b"SPTEACH\n" + struct.pack("<II", 1, len(text)) + text + struct.pack("<Q", params.size) + params.tobytes()
    (tmp_path / "v1.bin").write_bytes(reseal(body + bytes(8)))
    v1 = lab.LabTeacher.load(tmp_path / "v1.bin")
    assert (v1.model["causal"], v1.model["positions"], v1.model["head_width"], v1.model["kv_heads"]) == (False, "sinusoidal", 8, 4)
    assert v1.task["needles"] == 4
    back = sparsa.learn.Teacher.load(str(tmp_path / "v1.bin"))
    tokens = lab.task_batch(v1.task, "test", 1, 1)["tokens"][0]
    assert_close(torch_log_probs(v1, tokens), back.log_probs(tokens))
    assert_close(torch_log_probs(v1, tokens), t.log_probs(tokens))


def test_sdpa_attention_gives_the_same_forward(tmp_path):
    t = cpp_teacher("rotary", 2)
    t.save(str(tmp_path / "t.bin"))
    a = lab.LabTeacher.load(tmp_path / "t.bin")
    b = lab.LabTeacher.load(tmp_path / "t.bin", attention="sdpa")
    tokens = lab.task_batch(a.task, "validation", 0, 2)["tokens"]
    with torch.no_grad():
        np.testing.assert_allclose(a(torch.from_numpy(tokens)).numpy(), b(torch.from_numpy(tokens)).numpy(), atol=1e-4)


def test_torch_checkpoint_gives_the_same_forward_in_cpp(tmp_path):
    model = lab.LabTeacher.new(**TINY, kv_heads=2, positions="rotary", seed=7)
    report = lab.train(model, steps=3, batch=4, lr=0.05, seed=7, stop_accuracy=1.01, progress=None)
    assert report["steps"] == 3
    path = tmp_path / "torch.bin"
    model.save(path)
    back = sparsa.learn.Teacher.load(str(path))
    assert (back.n, back.kv_heads, back.positions, back.head_dim, back.causal) == (64, 2, "rotary", 16, True)
    np.testing.assert_array_equal(back.params, model.params_get())
    tokens = lab.task_batch(model.task, "test", 0, 1)["tokens"][0]
    assert_close(torch_log_probs(model, tokens), back.log_probs(tokens))


def test_torch_trainer_takes_the_cpp_trainers_steps():
    # Same streams, initial weights (teacher_init), warmup, Adam and clipping: after 4 steps at a
    # large rate (weights move by about 0.05) the two sets of weights agree to float32 rounding.
    cfg = dict(task="ruler", n=128, needles=2, pairs=4, queries=4, d=32, heads=4, head_dim=16, kv_heads=2, layers=2, mlp=32)
    t, cpp = sparsa.learn.train_teacher(**cfg, steps=4, batch=4, lr=0.5, seed=5, stop_accuracy=1.01)
    model = lab.LabTeacher.new(**cfg, seed=5)
    np.testing.assert_allclose(model.params_get(), sparsa.learn.teacher_init(**cfg, seed=5).params, rtol=1e-7, atol=0)   # float32
    report = lab.train(model, steps=4, batch=4, lr=0.5, seed=5, stop_accuracy=1.01, progress=None)
    moved = np.abs(t.params - sparsa.learn.teacher_init(**cfg, seed=5).params).max()
    assert moved > 0.01
    assert np.abs(model.params_get() - t.params).max() < 1e-4 * moved / 0.01
    assert report["first_loss"] == pytest.approx(cpp["first_loss"], rel=1e-5)
    assert report["validation_loss"] == pytest.approx(cpp["held_out_loss"], rel=1e-5)
    assert report["validation_accuracy"] == pytest.approx(cpp["held_out_accuracy"])


def test_training_lowers_the_loss():
    model = lab.LabTeacher.new(task="mqar", n=64, pairs=4, queries=4, d=32, heads=2, layers=1, mlp=32, seed=3)
    lines = []
    report = lab.train(model, steps=30, batch=8, lr=3e-3, warmup=5, seed=3, stop_accuracy=1.01, progress=lines.append)
    assert report["steps"] == 30 and report["stopped"] == "steps"
    assert report["last_loss"] < report["first_loss"] - 0.3, report
    assert lines[0].startswith("step     1/30  loss ") and "validation acc" in lines[-1]


def test_task_batches_are_the_cpp_streams():
    task = dict(kind="ruler", n=128, pairs=4, queries=4, keys=32, values=32, fillers=16, needles=2)
    a = lab.task_batch(task, "train", 10, 5, seed=1)
    b = lab.task_batch(task, "train", 12, 2, seed=1)
    np.testing.assert_array_equal(a["tokens"][2:4], b["tokens"])   # a sequence is a function of (stream, index)
    assert a["tokens"].shape == (5, 128) and a["targets"].shape == (5, 128)
    kinds = sparsa.learn.task_kinds()
    assert [kinds[k] for k in a["kind"]] == ["single", "multikey", "multivalue", "multiquery", "mqar"]   # index % 5
    v = lab.task_batch(task, "validation", 10, 5)
    assert not np.array_equal(a["tokens"], v["tokens"])
    assert (a["targets"] >= 0).sum() > 0 and ((a["depth"] >= 0) == (a["targets"] >= 0)).all()
    with pytest.raises(ValueError, match="'held-out' is not a stream"):
        lab.task_batch(task, "held-out", 0, 1)
    with pytest.raises(sparsa.Error, match="is the validation stream's seed"):
        lab.task_batch(task, "train", 0, 1, seed=0x76616c6964617469)


def test_checksum_is_fnv1a():
    def fnv(data):
        h = 0xcbf29ce484222325
        for byte in data:
            h = ((h ^ byte) * 0x100000001b3) % 2**64
        return h
    for data in (b"", b"a", bytes(range(256)) * 3):
        assert sparsa.learn.fnv1a64(data) == fnv(data)


def reseal(data):
    """The bytes with a fresh checksum (so that a later check, not the checksum, refuses them)."""
    body = data[:-8]
    return body + struct.pack("<Q", sparsa.learn.fnv1a64(body))


def test_bad_files_are_refused_naming_the_file(tmp_path):
    t = cpp_teacher("rotary", 2)
    good = tmp_path / "good.bin"
    t.save(str(good))
    data = good.read_bytes()
    cases = {
        "missing.bin": (None, "cannot read it"),
        "foreign.bin": (b"PK\x03\x04" + data[4:], "not a sparsa teacher checkpoint"),
        "empty.bin": (b"", "not a sparsa teacher checkpoint"),
        "short.bin": (data[:20], "truncated checkpoint"),
        "v3.bin": (reseal(data[:8] + struct.pack("<I", 3) + data[12:]), "checkpoint version 3 is not one this sparsa reads .*update sparsa"),
        "v0.bin": (reseal(data[:8] + struct.pack("<I", 0) + data[12:]), "checkpoint version 0 is not one"),
        "flipped.bin": (data[:-100] + bytes([data[-100] ^ 1]) + data[-99:], "checksum mismatch"),
        "cut.bin": (data[:-16], "checksum mismatch"),
        "extra.bin": (reseal(data[:-8] + bytes(8) + data[-8:]), "holds .* parameters, the header's model needs"),
        "header.bin": (reseal(data.replace(b'"heads":4', b'"heads":5')), "teacher: kv_heads = 2 must divide heads = 5"),
        "nojson.bin": (reseal(data.replace(b'"format"', b'"format" ')), "bad header"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(sparsa.Error, match=f"^{re.escape(str(path))}: {message}"):
            lab.LabTeacher.load(path)
    # the C++ reader refuses the same files (its words differ only where the reader does)
    with pytest.raises(sparsa.Error, match="checksum mismatch"):
        sparsa.learn.Teacher.load(str(tmp_path / "flipped.bin"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="attention must be 'sparsa' or 'sdpa'"):
        lab.LabTeacher.new(**TINY, attention="flash")
    with pytest.raises(sparsa.Error, match="kv_heads = 3 must divide heads = 4"):
        lab.LabTeacher.new(**TINY, kv_heads=3)
    model = lab.LabTeacher.new(**TINY)
    with pytest.raises(ValueError, match="steps = 0 and batch = 4 must be at least 1"):
        lab.train(model, steps=0, batch=4)
    with pytest.raises(sparsa.Error, match="nowhere/t.bin: cannot write it"):
        model.save("/nonexistent-folder/nowhere/t.bin")


@pytest.mark.skipif(not (torch.cuda.is_available() and sparsa.cuda_built), reason="needs a CUDA device and sparsa built with CUDA")
def test_cuda_forward_matches_the_cpu(capsys):
    # Head width 64 (the tensor-core kernels' bfloat16), grouped-query heads, blocks of 64 at n = 128.
    cfg = dict(task="ruler", n=128, needles=2, pairs=4, queries=4, d=64, heads=2, head_dim=64, kv_heads=1, layers=2, mlp=64)
    model = lab.LabTeacher.new(**cfg, seed=4)
    lab.train(model, steps=3, batch=4, lr=0.05, seed=4, stop_accuracy=1.01, progress=None)   # away from the initial weights
    tokens = lab.task_batch(model.task, "test", 0, 2)["tokens"]
    cpu = torch_log_probs_batch(model, tokens)
    model.cuda()
    fp32 = torch_log_probs_batch(model, tokens)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = torch_log_probs_batch(model, tokens)
        model.attention = "sdpa"
        sdpa = torch_log_probs_batch(model, tokens)
    errors = {name: float(np.abs(x - cpu).max()) for name, x in (("float32", fp32), ("bfloat16", bf16), ("sdpa bf16", sdpa))}
    with capsys.disabled():
        print(f"\nlab teacher on {torch.cuda.get_device_name()}: largest log-probability difference from the CPU's: {errors}")
    assert errors["float32"] < 1e-4
    assert np.abs(bf16 - cpu).mean() < 0.05 and np.abs(sdpa - cpu).mean() < 0.05
    # training steps on the GPU in bfloat16 (train's default there) move the loss
    model.attention = "sparsa"
    report = lab.train(model, steps=3, batch=4, lr=0.05, seed=4, stop_accuracy=1.01, progress=None)
    assert np.isfinite(report["last_loss"]) and report["steps"] == 3


def torch_log_probs_batch(model, tokens):
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.log_softmax(model(torch.from_numpy(tokens).to(device)).double(), -1).cpu().numpy()


def test_the_script_trains_and_the_cli_reads_its_checkpoint(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import SOURCE_DIR
    out = tmp_path / "t.bin"
    run = subprocess.run([sys.executable, str(SOURCE_DIR / "examples" / "torch" / "train_lab_teacher.py"), "--device", "cpu",
                          "--task", "single", "--needles", "1", "--n", "128", "--curriculum", "64", "--stage-minutes", "0.05",
                          "--d", "32", "--heads", "2", "--kv-heads", "1", "--layers", "1", "--mlp", "32", "--steps", "4",
                          "--batch", "2", "--eval-every", "2", "--eval-sequences", "4", "--later-lr", "1e-3", "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("teacher: causal, 1 layers x 2 heads (1 key/value heads) of width 16")
    assert any(line.startswith("n = 64: trained") for line in lines) and any(line.startswith("n = 128: trained") for line in lines)
    stages = [line for line in lines if line.startswith("stage n = ")]
    assert ", lr 0.002, " in stages[0] and ", lr 0.001, " in stages[1]
    assert lines[-1].startswith(f"wrote {out} (n = 128")
    back = sparsa.learn.Teacher.load(str(out))
    assert (back.n, back.kv_heads, back.task) == (128, 1, "single")
    bad = subprocess.run([sys.executable, str(SOURCE_DIR / "examples" / "torch" / "train_lab_teacher.py"), "--device", "cpu",
                          "--from", str(out), "--d", "64", "-o", str(tmp_path / "u.bin")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--from: the model options are the checkpoint's" in bad.stderr
    if os.environ.get("SPARSA_CLI"):   # ctest sets it: the C++ evaluation reads the PyTorch checkpoint
        cli = subprocess.run([os.environ["SPARSA_CLI"], "learn", "ruler", "--teachers", str(out), "--densities", "none",
                              "--test-inputs", "4", "-o", str(tmp_path / "ruler")], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert (tmp_path / "ruler" / "report.json").exists()
