"""`sparsa run --engine cuda` on content-based heads (lsh, anchors, favor, mixed with fixed heads),
through version 2 of the CLI's CUDA module (cli/cuda_module_abi.hpp):
  - a module of another version beside sparsa is refused in one line that says which is older
    and how to fix it (a stand-in module of version 1 is compiled here with the C compiler);
  - on a GPU: the per-head report and --check as the CPU path gives them. anchors in float32 must
    report exactly what the CPU engine reports (the GPU's balanced assignment is the CPU's, bit
    for bit); lsh and mixed layers pass --check against the dense reference over the GPU's own
    pairs; favor heads report their error against exact attention.
Without a GPU (or a sparsa built without the CUDA engine) the GPU cases skip, saying why."""
import json
import math
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from conftest import CLI, PATTERNS, ok, refused, run, write

MIXED = ("heads 4\nblock 16\ncausal\n"
         "attend = lsh(8, rounds = 2, chunk = 32)\n"
         "attend[head 1] = window(8) | lsh(8, rounds = 2, chunk = 32)\n"
         "attend[head 2] = favor(64)\n"
         "attend[head 3] = window(8)\n")


def module_beside_cli():
    return pathlib.Path(CLI).parent / "libsparsa_cli_cuda.so" if CLI else None


def gpu_or_skip():
    module = module_beside_cli()
    if module is None or not module.exists():
        pytest.skip("this sparsa has no CUDA module beside it (built without the CUDA engine)")
    ran = run(["run", PATTERNS / "local_window.pat", "--n", "128", "--engine", "cuda", "--runs", "1"])
    if ran.code != 0 and "no CUDA GPU here" in ran.out:
        pytest.skip("no CUDA GPU here: " + ran.out.strip())
    ok(ran)


def report(ran):
    ok(ran)
    return json.loads(ran.stdout)


def tensors(folder, heads, n, d, seed=0):
    rng = np.random.default_rng(seed)
    for name in ("q", "k", "v"):
        np.save(folder / f"{name}.npy", rng.standard_normal((heads, n, d)).astype(np.float32))
    return ["--q", "q.npy", "--k", "k.npy", "--v", "v.npy"]


# [SECTION] the module's version

def test_an_older_module_is_refused_in_one_line(scratch):
    module = module_beside_cli()
    if module is None or not module.exists():
        pytest.skip("this sparsa has no CUDA module beside it (built without the CUDA engine)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler here to make a stand-in module of version 1")
    # version 1's table begins as every version's does: version, then layout
    write(scratch, "old.c", "#include <stdint.h>\n"
                            "struct api { int32_t version; uint64_t layout; };\n"
                            "static const struct api table = {1, 0};\n"
                            "const struct api* sparsa_cli_cuda_api(void) { return &table; }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(scratch / "libsparsa_cli_cuda.so"), str(scratch / "old.c")], check=True)
    shutil.copy(CLI, scratch / "sparsa")
    write(scratch, "mixed.pat", MIXED)
    for script in ("mixed.pat", PATTERNS / "local_window.pat"):   # content-based or not: the module is refused
        ran = run(["run", script, "--n", "256", "--engine", "cuda"], cwd=scratch, program=str(scratch / "sparsa"))
        refused(ran, "libsparsa_cli_cuda.so is version 1 of the CUDA module's interface, but this sparsa needs version 2",
                "the module is older than sparsa", "rebuild both", "copy the libsparsa_cli_cuda.so built with this sparsa beside it")
        assert ran.out.count("\n") == 1 and ran.stdout == ""
    # what does not touch the GPU never loads it
    ok(run(["run", "mixed.pat", "--n", "256", "--runs", "1"], cwd=scratch, program=str(scratch / "sparsa")))


# [SECTION] on a GPU

def test_mixed_layer_checks_against_the_reference(scratch):
    gpu_or_skip()
    write(scratch, "mixed.pat", MIXED)
    given = tensors(scratch, 4, 1000, 64)
    for dtype, kernel in (("bf16", []), ("f32", ["--kernel", "1"]), ("fp16", [])):
        doc = report(run(["run", "mixed.pat", "--n", "1000", *given, "--engine", "cuda", "--dtype", dtype, *kernel,
                          "--check", "--json", "--runs", "2", "--out", "o.npy"], cwd=scratch, timeout=300))
        assert doc["check"]["ok"] is True, doc["check"]
        assert doc["check"]["tolerance"] == (1e-5 if dtype == "f32" else 2e-2)
        assert [h["kind"] for h in doc["per_head"]] == ["lsh", "lsh", "favor", "fixed"]
        assert [h.get("fixed_part") for h in doc["per_head"][:2]] == [False, True]
        for h in doc["per_head"][:2]:
            assert h["pairs"] > 0 and 1 <= h["bucket_min"] <= h["bucket_max"] and 0 < h["recall_mean"] <= 1
        assert doc["per_head"][2]["error"] > 0 and np.isfinite(doc["per_head"][2]["error"])
        assert set(doc["phases"]) == {"bucketing", "attention", "merge", "fixed"}
        assert doc["phases"]["bucketing"] > 0 and doc["phases"]["fixed"] > 0   # head 1's window is a fixed part
        assert doc["gpu"] and doc["dtype"] == dtype and doc["kernel"] is None
        assert len(doc["seconds"]) == 2 and min(doc["seconds"]) > 0
        o = np.load(scratch / "o.npy")
        assert o.shape == (4, 1000, 64) and np.isfinite(o).all()


def test_the_text_report_names_the_gpu_phases(scratch):
    gpu_or_skip()
    ran = run(["run", PATTERNS / "reformer_lsh.pat", "--n", "4096", "--engine", "cuda", "--check", "--runs", "3"], timeout=300)
    ok(ran, "content kernels", "phases      bucketing", "(the last run, CUDA events, over the content heads)",
       "heads with pairs against the dense reference over the same allowed pairs", ": ok (tolerance 2e-02)")
    assert ran.out.count("lsh(buckets 64, rounds 2, chunk 64, causal)") == 8
    assert "TFLOP/s effective" in ran.out


def test_anchors_in_float32_report_exactly_what_the_cpu_reports(scratch):
    gpu_or_skip()
    shutil.copy(PATTERNS / "anchors.pat", scratch / "anchors.pat")
    shutil.copy(PATTERNS / "anchors_d64.npz", scratch / "anchors_d64.npz")
    given = tensors(scratch, 8, 2000, 64, seed=3)
    common = ["run", "anchors.pat", "--n", "2000", *given, "--recall", "--json", "--runs", "1"]
    gpu = report(run(common + ["--engine", "cuda", "--dtype", "f32", "--check"], cwd=scratch, timeout=300))
    cpu = report(run(common, cwd=scratch, timeout=300))
    assert gpu["check"]["ok"] is True
    fields = ("head", "kind", "family", "fixed_part", "pairs", "density", "empty_rows", "bucket_min", "bucket_max", "imbalance")
    assert [{f: h[f] for f in fields} for h in gpu["per_head"]] == [{f: h[f] for f in fields} for h in cpu["per_head"]]
    assert [h["recall_mean"] for h in gpu["per_head"]] == pytest.approx([h["recall_mean"] for h in cpu["per_head"]], rel=1e-9)
    assert gpu["kept_pairs"] == cpu["kept_pairs"]
    o_gpu = np.load(scratch / "o.npy") if (scratch / "o.npy").exists() else None
    assert o_gpu is None   # no --out: nothing written


def test_favor_layer_reports_its_error(scratch):
    gpu_or_skip()
    doc = report(run(["run", PATTERNS / "performer_favor.pat", "--n", "2048", "--engine", "cuda", "--check", "--json", "--runs", "2"],
                     timeout=300))
    kinds = [h["kind"] for h in doc["per_head"]]
    assert kinds == ["favor"] * 6 + ["fixed"] * 2
    assert doc["check"]["ok"] is True   # the two window heads, against the reference
    # FAVOR+'s error against exact attention on unit-normal Q and K is large whatever the
    # features (about 4 to 5 at d = 64 to 128: its variance grows as exp(|q|^2 + |k|^2); README):
    # the GPU's must be the CPU engine's estimate of the same features on the same input
    cpu = report(run(["run", PATTERNS / "performer_favor.pat", "--n", "2048", "--check", "--json", "--runs", "2"],
                     timeout=300))
    for h, c in zip(doc["per_head"][:6], cpu["per_head"][:6]):
        assert math.isfinite(h["error"]) and h["error"] > 0 and h["features"] == 256
        assert h["error"] == pytest.approx(c["error"], rel=0.05)
    assert doc["gflops"] is None and "favor" in doc["check"]
