"""bench/gpu_compare.py without a GPU: its Markdown and issue 15's targets from synthetic rows
(bench/gpu_report.py), and the whole script on CPU stand-ins for FlexAttention, SDPA and triton
(tests/bench/fake_gpu.py) on masks compiled by the sparsa CLI.

    /usr/bin/python3 -m pytest -q tests/bench
    SPARSA_CLI=build-x/cli/sparsa /usr/bin/python3 -m pytest -q tests/bench   # the CLI to compile masks
"""
import csv
import glob
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import gpu_report  # noqa: E402

H, D = 16, 128


def row(key, n, impl, pass_, ms, pairs, family, mask=None, auto=False, block=64):
    return {"mask": mask or key, "key": key, "n": n, "impl": impl, "pass": pass_, "ms": ms, "pairs": pairs,
            "family": family, "auto": auto, "block": block}


def dense_pairs(n):
    return H * n * n


def sparsa(key, n, pairs, fwd_ms, bwd_ms, block=64):
    return [row(key, n, "sparsa kernel 15 (auto)", "fwd", fwd_ms, pairs, "sparsa", auto=True, block=block),
            row(key, n, "sparsa kernel 15", "fwd", fwd_ms + 0.5, pairs, "sparsa", block=block),
            row(key, n, "sparsa bwd 2 (auto)", "bwd", bwd_ms, pairs, "sparsa", auto=True, block=block)]


def h100_like():
    """Rows shaped like an H100 run (forward times from bench/results/cuda-nvidia-h100-80gb-hbm3.md)."""
    P16, P131 = dense_pairs(16384), dense_pairs(131072)
    Pbb, Pw = 668_955_000, 537_000_000
    rows = [row("dense-16384", 16384, "SDPA cuDNN", "fwd", 3.560, P16, "sdpa-cudnn", mask="dense"),
            row("dense-16384", 16384, "SDPA FlashAttention-2", "fwd", 6.136, P16, "sdpa-fa2", mask="dense"),
            row("dense-16384", 16384, "SDPA cuDNN", "bwd", 10.18, P16, "sdpa-cudnn", mask="dense"),
            row("dense-16384", 16384, "SDPA FlashAttention-2", "bwd", 18.89, P16, "sdpa-fa2", mask="dense"),
            row("dense-16384", 16384, "FlexAttention as users write it", "fwd", 4.420, P16, "flex"),
            row("dense-16384", 16384, "FlexAttention as users write it", "bwd", 12.0, P16, "flex"),
            row("dense-16384", 16384, "FlexAttention as users write it", "fwdbwd", 16.5, P16, "flex"),
            row("bigbird64-65536", 65536, "FlexAttention as users write it", "fwd", 4.461, Pbb, "flex"),
            row("bigbird64-65536", 65536, "FlexAttention as users write it", "fwdbwd", 11.9, Pbb, "flex"),
            row("window256-65536", 65536, "FlexAttention as users write it", "fwd", 1.104, Pw, "flex"),
            row("window256-65536", 65536, "FlexAttention as users write it", "fwdbwd", 4.16, Pw, "flex")]
    rows += sparsa("dense-16384", 16384, P16, 4.619, 11.0)
    rows += sparsa("dense-131072", 131072, P131, 290.0, 700.0)
    rows += sparsa("bigbird64-65536", 65536, Pbb, 1.005, 3.2)
    rows += sparsa("window256-65536", 65536, Pw, 0.818, 2.0)
    return rows


def data(rows, **kw):
    base = {"gpu": "Test GPU", "command": "test", "torch": "2.11", "heads": H, "d": D, "passes": ["fwd", "bwd", "fwdbwd"],
            "notes": [], "kept_ratio": {"bigbird64-65536": 1.0, "window256-65536": 1.12, "dense-16384": 1.0,
                                        "dense-131072": 1.0}, "rows": rows}
    base.update(kw)
    return base


def line_of(text, *words):
    found = [line for line in text.splitlines() if all(w in line for w in words)]
    assert len(found) == 1, (words, found)
    return found[0]


def test_rates_count_the_backward_as_2_5_and_fwdbwd_as_3_5_forwards():
    r = row("dense-16384", 16384, "x", "fwd", 4.0, dense_pairs(16384), "flex")
    fwd = gpu_report.rate(r, D)
    assert fwd == pytest.approx(4 * dense_pairs(16384) * D / 4.0 / 1e9)
    assert gpu_report.rate(dict(r, **{"pass": "bwd"}), D) == pytest.approx(2.5 * fwd)
    assert gpu_report.rate(dict(r, **{"pass": "fwdbwd"}), D) == pytest.approx(3.5 * fwd)


def test_sparsa_fwdbwd_is_the_auto_forward_plus_the_backward():
    rows = gpu_report.sparsa_fwdbwd_add(h100_like())
    fb = [r for r in rows if r["family"] == "sparsa" and r["pass"] == "fwdbwd" and r["key"] == "bigbird64-65536"]
    assert len(fb) == 1
    assert fb[0]["ms"] == pytest.approx(1.005 + 3.2)   # the auto forward (1.005), not kernel 15's 1.505
    assert fb[0]["with_fwd"] == "sparsa kernel 15 (auto)"


def test_targets_say_by_how_much_each_is_missed():
    text = gpu_report.report(data(h100_like()))
    # forward dense 16,384: 476.1 / 617.7 = 0.771 of cuDNN against 0.9
    fwd = line_of(text, "forward, dense, n = 16,384")
    assert "476.1 vs 617.7" in fwd and "missed by 14.4%: 4.619 ms would need to be 3.956 ms (1.17x faster)" in fwd
    # backward: 499.8 TFLOP/s, FA2 291 (met), cuDNN 540 (1 - 10.18 / 11.0: missed by 7.5%)
    assert line_of(text, "backward, dense", "FlashAttention-2").endswith("| met |")
    assert "missed by 7.5%: 11.000 ms would need to be 10.180 ms" in line_of(text, "backward, dense", "further aim")
    # BigBird fwd+bwd: Flex 11.9 / (1.005 + 3.2) = 2.83 against 3
    bb = line_of(text, "bigbird64, n = 65,536, forward + backward")
    assert "2.830" in bb and "missed by 5.7%: 4.205 ms would need to be 3.967 ms (1.06x faster)" in bb
    # window(256) forward: 1.104 / 0.818 = 1.35 against 1.5; fwd+bwd: 4.16 / 2.818 = 1.476
    assert "missed by 10.0%" in line_of(text, "window256, n = 65,536, forward:")
    assert "missed by 1.6%" in line_of(text, "window256, n = 65,536, forward + backward")
    assert "Targets: 1 met, " in text


def test_kept_block_rates_compare_with_the_nearest_dense_of_the_same_block():
    text = gpu_report.report(data(h100_like()))
    # no dense at 65,536: 131,072 is nearer (in ratio) than 16,384
    line = line_of(text, "forward, rate on kept blocks", "bigbird64-65536")
    assert "vs dense-131072" in line
    kb = 4 * 668_955_000 * D / 1.005 / 1e9
    dense = 4 * dense_pairs(131072) * D / 290.0 / 1e9
    assert f"| {kb / dense:.3f} |" in line
    # window's kept-block rate counts the kept ratio (1.12)
    w = line_of(text, "backward, rate on kept blocks", "window256-65536")
    assert f"{2.5 * 4 * 537_000_000 * D / 2.0 / 1e9 * 1.12:.1f} vs" in w


def test_backward_table_has_peers_and_sparsa_with_its_forward():
    text = gpu_report.report(data(h100_like()))
    assert "## Forward" in text and "## Backward and forward + backward" in text
    sp = line_of(text, "| bigbird64-65536 |", "sparsa bwd 2 (auto) [fwd+bwd with sparsa kernel 15 (auto)]")
    cells = [c.strip() for c in sp.split("|")[1:-1]]
    assert cells[4] == "3.200" and cells[9] == "4.205"
    assert cells[11] == f"{11.9 / 4.205:.2f}"   # fwd+bwd x Flex
    flex = line_of(text, "| dense-16384 |", "FlexAttention as users write it", "16.500")
    assert [c.strip() for c in flex.split("|")[1:-1]][8] == f"{10.18 / 12.0:.2f}"   # bwd / cuDNN dense, same pairs


def test_a_subset_of_passes_and_other_shapes():
    text = gpu_report.report(data(h100_like(), passes=["bwd", "fwdbwd"]))
    assert "## Forward" not in text and "## Backward" in text
    text = gpu_report.report(data(h100_like(), d=64))
    assert "Not evaluated: the targets are for 16 heads and d = 128; this run has 16 heads, d = 64." in text
    assert "| target (issue 15) |" not in text


def test_missing_rows_are_not_measured_not_met():
    rows = [r for r in h100_like() if not (r["family"] == "flex" and r["key"] == "window256-65536")]
    text = gpu_report.report(data(rows))
    assert line_of(text, "window256, n = 65,536, forward:").endswith("| not measured in this run |")


def test_the_csv_must_have_the_runs_d_and_heads(tmp_path):
    path = tmp_path / "sparsa.csv"
    path.write_text("mask,n,block,heads,d,batch,dtype,pairs,kernel,median_ms,runs,tflops,chosen_by\n"
                    "dense-4096,4096,64,16,64,1,bf16,268435456,15,0.3,20,400,auto\n")
    with pytest.raises(SystemExit) as e:
        gpu_report.sparsa_rows_read(str(path), 128, 16)
    assert "sparsa.csv:2: d = 64, 16 heads, but this run has --d 128 --heads 16" in str(e.value)
    rows = gpu_report.sparsa_rows_read(str(path), 64, 16)
    assert rows[0]["impl"] == "sparsa kernel 15 (auto)" and rows[0]["pass"] == "fwd" and rows[0]["auto"]


# [SECTION] the whole script on CPU stand-ins

def sparsa_cli():
    found = [os.environ.get("SPARSA_CLI", "")] + sorted(glob.glob(str(REPO / "build*" / "cli" / "sparsa")))
    return next((p for p in found if p and os.access(p, os.X_OK)), None)


PATTERNS = {"dense": "attend = dense", "window256": "attend = window(256)",
            "bigbird64": "attend = band(1) | global(first(2 * B)) | random(3, seed = 7)"}


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    cli = sparsa_cli()
    if cli is None:
        pytest.skip("no sparsa CLI to compile masks (set SPARSA_CLI)")
    folder = tmp_path_factory.mktemp("masks")
    out = []
    for name, block in (("dense", 64), ("window256", 64), ("window256", 128), ("bigbird64", 64)):
        pat = folder / f"{name}.pat"
        pat.write_text(f"block 64\n{PATTERNS[name]}\n")
        path = folder / f"{name}{'B128' if block == 128 else ''}-1024.npz"
        subprocess.run([cli, "compile", str(pat), "--n", "1024", "--block", str(block), "-o", str(path)],
                       check=True, capture_output=True)
        out.append(str(path))
    return out


def fake_run(args, cwd, refuse=True):
    env = dict(os.environ, FAKE_SDPA_REFUSE="cudnn-causal-bwd" if refuse else "")
    return subprocess.run([sys.executable, str(REPO / "tests" / "bench" / "fake_gpu.py")] + args, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_script_in_two_passes_merged(masks, tmp_path):
    csv_path = tmp_path / "sparsa.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow("mask,n,block,heads,d,batch,dtype,pairs,kernel,median_ms,runs,tflops,chosen_by".split(","))
        for m in masks:
            name = pathlib.Path(m).stem
            w.writerow([name, 1024, 128 if "B128" in name else 64, 1, 32, 1, "bf16", 500000, 15, 0.05, 20, 1, "auto"])
            w.writerow([name, 1024, 128 if "B128" in name else 64, 1, 32, 1, "bf16", 500000, "bwd2", 0.12, 20, 1, "auto"])
    common = masks + ["--heads", "1", "--d", "32", "--sparsa-csv", str(csv_path), "--out-dir", str(tmp_path / "out"),
                      "--copy-to", str(tmp_path / "logs")]
    # the first part written to the logs folder alone (--out-dir = --copy-to), as run_gpu.sh's compare_fwd does
    first = fake_run(common + ["--passes", "fwd", "--command", "first", "--out-dir", str(tmp_path / "logs")], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    part = tmp_path / "logs" / "cuda-fake-gpu-cpu-stand-ins-fwd.md"
    assert part.exists() and not (tmp_path / "out").exists()
    assert "## Backward" not in part.read_text()
    # the same passes again cannot be merged
    again = fake_run(common + ["--passes", "fwd", "--merge", str(tmp_path / "logs" / "cuda-fake-gpu-cpu-stand-ins-fwd.json")], tmp_path)
    assert again.returncode != 0 and "that run timed fwd too (give --passes the passes it lacks)" in again.stderr
    second = fake_run(common + ["--passes", "bwd,fwdbwd", "--slow-ms", "0", "--command", "second",
                                "--merge", str(tmp_path / "logs" / "cuda-fake-gpu-cpu-stand-ins-fwd.json")], tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    text = (tmp_path / "out" / "cuda-fake-gpu-cpu-stand-ins.md").read_text()
    assert "Command: `first (passes fwd), then second (passes bwd,fwdbwd)`" in text
    assert "## Forward" in text and "## Backward and forward + backward" in text
    assert "Passes timed" not in text   # the first run's line on its passes is outdated by the merge
    # every fair Flex row in both tables; window256B128 shares window256's backward
    for name in ("dense-1024", "window256-1024", "bigbird64-1024"):
        line_of(text.split("## Backward")[0], f"| {name} |", "FlexAttention as users write it")
        line_of(text.split("## Backward")[1], f"| {name} |", "FlexAttention as users write it")
    line_of(text, "| window256B128-1024 |", "timed on window256-1024")
    # the table-lookup check was made once, in the first run
    assert text.count("window256-1024: fair FlexAttention mask_mod = abs(q - k) <= 256;") == 1
    # the refused case is named, with why, and the slow timer (--slow-ms 0) is listed
    assert "Not run (passes bwd,fwdbwd): SDPA cuDNN causal n=1024 bwd: RuntimeError: No available kernel." in text
    assert "took over 0 ms" in text and "window256-1024 fair Flex bwd (" in text
    # sparsa's fwd+bwd is the sum of the CSV's medians
    sp = line_of(text, "| dense-1024 |", "sparsa bwd 2 (auto)")
    assert "| 0.120 |" in sp and "| 0.170 |" in sp
    saved = json.loads((tmp_path / "logs" / "cuda-fake-gpu-cpu-stand-ins.json").read_text())
    assert saved["passes"] == ["fwd", "bwd", "fwdbwd"]
    assert gpu_report.report(saved) == text
