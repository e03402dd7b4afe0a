#!/usr/bin/env python3
"""Where ptxas put a kernel's tensor-core waits, read from a cubin without cuobjdump.

This machine has nvcc and ptxas but no disassembler (cuobjdump and nvdisasm come only with the GPU
machine's toolkit), and what matters for kernels 16 to 18 is one question of instruction order:
does the wait for O += P V (`WARPGROUP.DEPBAR.LE gsb0, 0x0`) come after the softmax's exponentials
(`MUFU.EX2`) and P's packing (`F2FP`), so the softmax runs beside the product, or before them
(bench/cuda-notes.md, "The profile of forward kernel 18")? This prints, for one kernel of a cubin,
those instructions in order, runs of one folded: `DEPBAR1@1628 MUFUx34@1876 DEPBAR0@1975 F2FPx16@1976`
(kind, count, index of the first).

Hopper instructions are 16 bytes; the opcode is the low 12 bits. The encodings used, found from
small sm_90a kernels compiled here (tests/bench/test_sass_waits.py compiles one and checks them):
MUFU 0x308, F2FP 0x23e, and 0x9c5 for WARPGROUP.ARRIVE (bits 32-63 zero) and WARPGROUP.DEPBAR
(bits 32-63 = 0x8000, the count of groups left pending in bits 72-79). Checked against Nsight
Compute's SASS of kernel 18 (2026-12-07): the same indices for its two waits and first MUFU.

    nvcc -cubin -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++20 -I. -x cu engine/cuda/attn_fwd_ws.cu -o ws.cubin
    python3 bench/sass_waits.py ws.cubin --kernel attn_fwd_kernel17 --match __nv_bfloat16Li128ELi64
"""
import argparse
import struct
import sys

MUFU, F2FP, WARPGROUP = 0x308, 0x23E, 0x9C5


def text_sections(path):
    """{section name: bytes} of an ELF64 file's sections whose names start with .text."""
    with open(path, "rb") as f:
        b = f.read()
    if b[:4] != b"\x7fELF" or b[4] != 2:
        raise ValueError(f"{path}: not a 64-bit ELF file (a cubin from nvcc -cubin)")
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", b, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    out = {}
    for name, _type, _flags, _addr, offset, size in headers:
        label = b[names_at + name:b.index(b"\0", names_at + name)].decode()
        if label.startswith(".text."):
            out[label[len(".text."):]] = b[offset:offset + size]
    return out


def kind(word):
    """The name this tool gives an instruction (a 128-bit int), or None for the others."""
    op = word & 0xFFF
    if op == MUFU:
        return "MUFU"
    if op == F2FP:
        return "F2FP"
    if op == WARPGROUP:
        if (word >> 32) & 0xFFFFFFFF == 0x8000:
            return f"DEPBAR{(word >> 72) & 0xFF}"
        return "ARRIVE"
    return None


def order(code):
    """[[kind, count, first index], ...] for the code of one kernel."""
    out = []
    for k in range(0, len(code) - len(code) % 16, 16):
        name = kind(int.from_bytes(code[k:k + 16], "little"))
        if name is None:
            continue
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1, k // 16])
    return out


def render(runs):
    return " ".join(f"{n}x{c}@{i}" if c > 1 else f"{n}@{i}" for n, c, i in runs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cubin")
    ap.add_argument("--kernel", required=True, help="a part of the kernel's (mangled) name, e.g. attn_fwd_kernel17")
    ap.add_argument("--match", default="", help="another part it must contain, e.g. __nv_bfloat16Li128ELi64 (bf16, d = 128, blocks of 64)")
    a = ap.parse_args(argv)
    try:
        sections = text_sections(a.cubin)
    except (OSError, ValueError) as e:
        sys.exit(f"sass_waits.py: {e}")
    names = [n for n in sections if a.kernel in n and a.match in n]
    if not names:
        sys.exit(f"sass_waits.py: no kernel in {a.cubin} has both '{a.kernel}' and '{a.match}' in its name")
    for n in sorted(names):
        print(f"{n}: {render(order(sections[n]))}")


if __name__ == "__main__":
    main()
