"""bench/sass_waits.py (the order of a kernel's tensor-core waits, exponentials and packs, read from a
cubin): the encodings it relies on, checked on a small sm_90a kernel compiled with this machine's
nvcc (skipped without one), and files or names it cannot use refused with what and where."""
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import sass_waits  # noqa: E402

NVCC = shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if pathlib.Path(p).exists()), None)

# Every kind the tool names: a wgmma fence (ARRIVE), an ex2 (MUFU), a bf16 pack (F2FP), and waits
# leaving 1 and 0 groups pending (DEPBAR1, DEPBAR0).
KERNEL = r"""
__global__ void probe(float* x) {
    float v = x[threadIdx.x];
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(v));
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    unsigned r;
    asm volatile("cvt.rn.bf16x2.f32 %0, %1, %1;" : "=r"(r) : "f"(v));
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    reinterpret_cast<unsigned*>(x)[threadIdx.x] = r;
}
"""


def compiled_sections(tmp_path, name, source):
    """source compiled for sm_90a with this repository on the include path: {kernel: code}."""
    src, cubin = tmp_path / f"{name}.cu", tmp_path / f"{name}.cubin"
    src.write_text(source)
    subprocess.run([NVCC, "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-std=c++20", f"-I{REPO}",
                    "-isystem=/usr/include/eigen3", "-x", "cu", str(src), "-o", str(cubin)], check=True, capture_output=True)
    return cubin, sass_waits.text_sections(str(cubin))


@pytest.mark.skipif(NVCC is None, reason="no nvcc on this machine")
def test_the_encodings_name_every_kind_in_a_compiled_kernel(tmp_path, capsys):
    cubin, sections = compiled_sections(tmp_path, "probe", KERNEL)
    (name,) = [n for n in sections if "probe" in n]
    kinds = [k for k, _, _ in sass_waits.order(sections[name])]
    assert {"ARRIVE", "MUFU", "F2FP", "DEPBAR1", "DEPBAR0"} <= set(kinds)
    assert kinds.index("ARRIVE") < kinds.index("MUFU") < kinds.index("F2FP")   # the data dependences keep these in order
    sass_waits.main([str(cubin), "--kernel", "probe"])
    out = capsys.readouterr().out
    assert out.startswith(name + ": ") and "MUFU@" in out and "DEPBAR0@" in out


def test_the_kinds_from_their_bits():
    assert sass_waits.kind(0x000fe4000001000000008000000079c5) == "DEPBAR0"
    assert sass_waits.kind(0x000fe4000001020000008000000079c5) == "DEPBAR2"
    assert sass_waits.kind(0x000fe2000000000000000000000079c5) == "ARRIVE"
    assert sass_waits.kind(0x308) == "MUFU" and sass_waits.kind(0x23E) == "F2FP" and sass_waits.kind(0x918) is None
    runs = sass_waits.order(b"".join(w.to_bytes(16, "little") for w in [0x308, 0x308, 0x918, 0x23E]))
    assert sass_waits.render(runs) == "MUFUx2@0 F2FP@3"


def test_what_it_cannot_use_is_refused(tmp_path, capsys):
    bad = tmp_path / "not.cubin"
    bad.write_bytes(b"hello")
    with pytest.raises(SystemExit) as e:
        sass_waits.main([str(bad), "--kernel", "k"])
    assert "not.cubin: not a 64-bit ELF file" in str(e.value)
    with pytest.raises(SystemExit) as e:
        sass_waits.main([str(tmp_path / "missing.cubin"), "--kernel", "k"])
    assert "missing.cubin" in str(e.value)
