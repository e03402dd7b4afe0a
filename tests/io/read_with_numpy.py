"""Reads every sparsa mask file (.npz) in a folder with numpy alone, as docs/formats.md says,
and checks it against NAME.dense.npy (bool [layers, heads, n, n], written beside it).

Each file's dense mask is rebuilt three ways: from the CSR arrays + bitmask, from FlexAttention's
kv_num_blocks / kv_indices / full_kv_* arrays built from the CSR arrays (docs/formats.md's
flex_kv_blocks) + bitmask, and from the FlexAttention mask_mod of docs/formats.md evaluated on
every pair. Version 1 files (which stored the Flex arrays, padded to flex_kv_width) must also
store exactly the arrays flex_kv_blocks builds. Version 3 files also hold content-based heads in
the header: each (layer, head)'s spec must be NAME.content.json's, and a spec's file must have the
size and CRC-32 (zlib.crc32) the header records. Prints a line per file; exits 1 on any mismatch.
usage: /usr/bin/python3 read_with_numpy.py DIR
"""
import json
import pathlib
import sys
import zlib

import numpy as np


def load(path):
    z = np.load(path)  # no pickle: plain arrays only
    header = json.loads(z["header"].tobytes().decode("utf-8"))
    assert header["format"] == "sparsa.maskset" and header["version"] in (1, 2, 3), header
    return z, header


def content_specs(header):
    """Each (layer, head)'s content-based spec as docs/formats.md says: header["content"] lists the
    distinct specs, header["content_index"][l][h] picks one (-1: none). [L][H] of dict or None."""
    if "content" not in header:
        assert header["version"] < 3 and "content_index" not in header, "version 3 files name their content"
        return [[None] * header["heads"] for _ in range(header["layers"])]
    assert header["version"] == 3, "content needs version 3"
    specs, index = header["content"], header["content_index"]
    assert len(index) == header["layers"] and all(len(row) == header["heads"] for row in index)
    for spec in specs:
        assert spec["kind"] in ("lsh", "anchors", "favor"), spec
        path = spec.get("fit" if spec["kind"] == "anchors" else "file", "")
        if path:
            data = pathlib.Path(path).read_bytes()
            assert len(data) == spec["file_bytes"] and zlib.crc32(data) == spec["file_crc32"], f"{path} is not the file saved"
    used = {u for row in index for u in row if u >= 0}
    assert used == set(range(len(specs))), "every spec is used by some (layer, head)"
    strip = lambda s: {k: v for k, v in s.items() if k not in ("file_bytes", "file_crc32")}
    return [[strip(specs[u]) if u >= 0 else None for u in row] for row in index]


def dense_from_csr(z, header):
    n, B, L, H = header["n"], header["block"], header["layers"], header["heads"]
    Q = -(-n // B)
    bits = np.unpackbits(z["bitmask"].view(np.uint8), bitorder="little").reshape(-1, B, B).astype(bool)
    out = np.zeros((L, H, Q * B, Q * B), dtype=bool)  # padded to whole blocks, cropped below
    for l in range(L):
        for h in range(H):
            u = z["mask_index"][l, h]
            row_ptr = z["row_ptr"][u]
            for qb in range(Q):
                for e in range(row_ptr[qb], row_ptr[qb + 1]):
                    kb, p = z["col_idx"][e], z["partial_idx"][e]
                    out[l, h, qb * B:(qb + 1) * B, kb * B:(kb + 1) * B] = True if p < 0 else bits[p]
    return out[:, :, :n, :n]


def block_kinds(z, header, l):
    """kind[h, qb, kb] for layer l: -1 block not kept, -2 full, p >= 0 partial with bitmask p
    (the table docs/formats.md's FlexAttention mask_mod reads)."""
    n, B, H = header["n"], header["block"], header["heads"]
    Q = -(-n // B)
    kind = np.full((H, Q, Q), -1, dtype=np.int64)
    for h in range(H):
        row_ptr = z["row_ptr"][z["mask_index"][l, h]]
        for qb in range(Q):
            e = np.arange(row_ptr[qb], row_ptr[qb + 1])
            kind[h, qb, z["col_idx"][e]] = np.where(z["partial_idx"][e] < 0, -2, z["partial_idx"][e])
    return kind


def flex_kv_blocks(z, header, l):
    """FlexAttention's block lists of layer l, built from the CSR arrays (docs/formats.md):
    kv_num_blocks [H, Q] and kv_indices [H, Q, Q] for the partial blocks, full_kv_num_blocks and
    full_kv_indices for the full ones; each row's key blocks ascending, then 0-padded."""
    n, B, H = header["n"], header["block"], header["heads"]
    Q = -(-n // B)
    out = {name: np.zeros((H, Q) if "num" in name else (H, Q, Q), dtype=np.int32)
           for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")}
    for h in range(H):
        row_ptr = z["row_ptr"][z["mask_index"][l, h]]
        rows = np.repeat(np.arange(Q), np.diff(row_ptr))               # query block of each kept block
        cols = z["col_idx"][row_ptr[0]:row_ptr[Q]]
        full = z["partial_idx"][row_ptr[0]:row_ptr[Q]] < 0
        for prefix, keep in (("", ~full), ("full_", full)):
            r, c = rows[keep], cols[keep]
            num = np.bincount(r, minlength=Q)
            slot = np.arange(len(r)) - (np.cumsum(num) - num)[r]       # place of each block in its row
            out[prefix + "kv_num_blocks"][h] = num
            out[prefix + "kv_indices"][h, r, slot] = c
    return out


def dense_from_flex(z, header):
    """What FlexAttention's fused kernel computes: the blocks kv_indices and full_kv_indices name,
    full ones whole, partial ones through the bitmask. A version 1 file's stored Flex arrays must
    be the built ones (cut to flex_kv_width)."""
    n, B, L, H = header["n"], header["block"], header["layers"], header["heads"]
    Q = -(-n // B)
    bits = np.unpackbits(z["bitmask"].view(np.uint8), bitorder="little").reshape(-1, B, B).astype(bool)
    stored = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")
    if header["version"] == 1:
        W = header["flex_kv_width"]
        for name in stored:
            want = (L, H, Q) if "num" in name else (L, H, Q, W)
            assert z[name].shape == want and z[name].dtype == np.int32, (name, z[name].shape, want)
    else:
        assert not set(stored) & set(z.files) and "flex_kv_width" not in header, "version 2 stores no Flex arrays"
    out = np.zeros((L, H, Q * B, Q * B), dtype=bool)
    for l in range(L):
        kind = block_kinds(z, header, l)
        flex = flex_kv_blocks(z, header, l)
        if header["version"] == 1:
            for name in stored:
                if "num" in name:
                    assert np.array_equal(z[name][l], flex[name]), f"stored {name} differs from the CSR arrays"
                else:
                    assert np.array_equal(z[name][l], flex[name][..., :W]) and not flex[name][..., W:].any(), \
                        f"stored {name} differs from the CSR arrays"
        for h in range(H):
            for qb in range(Q):
                for prefix, full in (("", False), ("full_", True)):
                    count = flex[prefix + "kv_num_blocks"][h, qb]
                    row = flex[prefix + "kv_indices"][h, qb]
                    assert np.all(np.diff(row[:count]) > 0), "kv indices not ascending"
                    assert np.all(row[count:] == 0), "kv indices not padded with 0"
                    for kb in row[:count]:
                        p = kind[h, qb, kb]
                        assert (p == -2) == full and p != -1, f"{prefix}kv_indices names a block of the wrong kind"
                        out[l, h, qb * B:(qb + 1) * B, kb * B:(kb + 1) * B] = True if full else bits[p]
    return out[:, :, :n, :n]


def dense_from_mask_mod(z, header):
    """docs/formats.md's mask_mod, in numpy, evaluated on every (query, key) pair."""
    n, B, L, H = header["n"], header["block"], header["layers"], header["heads"]
    bits = np.unpackbits(z["bitmask"].view(np.uint8), bitorder="little").reshape(-1, B, B).astype(bool)
    bits = np.concatenate([bits, np.zeros((1, B, B), dtype=bool)])  # a spare, so never empty
    q_idx, kv_idx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    out = np.zeros((L, H, n, n), dtype=bool)
    for l in range(L):
        kind = block_kinds(z, header, l)
        for h in range(H):
            p = kind[h, q_idx // B, kv_idx // B]
            out[l, h] = (p == -2) | ((p >= 0) & bits[p.clip(min=0), q_idx % B, kv_idx % B])
    return out


def main():
    folder = pathlib.Path(sys.argv[1])
    files = sorted(folder.glob("*.npz"))
    if not files:
        print(f"no .npz files in {folder}")
        return 1
    failed = 0
    for path in files:
        try:
            z, header = load(path)
            expected = np.load(path.with_suffix(".dense.npy"))
            assert expected.dtype == np.bool_, expected.dtype
            csr = dense_from_csr(z, header)
            flex = dense_from_flex(z, header)
            mask_mod = dense_from_mask_mod(z, header)
            problems = []
            if csr.shape != expected.shape or not np.array_equal(csr, expected):
                problems.append("CSR + bitmask")
            if flex.shape != expected.shape or not np.array_equal(flex, expected):
                problems.append("Flex arrays + bitmask")
            if not np.array_equal(mask_mod, expected):
                problems.append("the mask_mod")
            content = content_specs(header)
            expected_content = path.with_suffix(".content.json")
            if expected_content.exists():
                if content != json.loads(expected_content.read_text()):
                    problems.append("the content specs")
            elif any(spec is not None for row in content for spec in row):
                problems.append("content specs with no .content.json to check them")
            status = "OK" if not problems else "MISMATCH from " + " and ".join(problems)
        except Exception as e:  # any failure to read counts as a mismatch
            status = f"ERROR {type(e).__name__}: {e}"
            expected = None
        if status != "OK":
            failed += 1
        shape = "x".join(map(str, expected.shape)) if expected is not None else "?"
        print(f"{path.name}: {status} (version {header['version']}, dense {shape}, density {expected.mean():.3f})"
              if expected is not None
              else f"{path.name}: {status}")
    print(f"numpy check: {len(files)} files read, {failed} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
