"""A MaskSet layer as PyTorch FlexAttention's BlockMask (torch.nn.attention.flex_attention).

FlexAttention splits a layer's kept blocks as sparsa does: full blocks (every pair allowed, no
mask_mod call) and partial blocks (mask_mod decides each pair). flex_arrays() builds that layout
with numpy alone; to_flex_block_mask() hands it to torch.
"""

import inspect

import numpy as np


def flex_arrays(mask_set, layer):
    """FlexAttention's layout of one layer, in numpy, for batch 1.

    Returns a dict:
      kv_num_blocks       [1, heads, q_blocks] int32: partial blocks of each query block row
      kv_indices          [1, heads, q_blocks, k_blocks] int32: their key blocks, first, then 0-padded
      full_kv_num_blocks  [1, heads, q_blocks] int32: full blocks of each row
      full_kv_indices     [1, heads, q_blocks, k_blocks] int32
      lookup              [heads, q_blocks, k_blocks] int32: 0 not kept, 1 full, 2 + p partial block p
      bits                [2 + partial, B, B] bool: [0] all False, [1] all True, [2 + p] partial block p's pairs
    so that pair (q, k) of head h is allowed exactly when
      bits[lookup[h, q // B, k // B], q % B, k % B].
    """
    if not 0 <= layer < mask_set.layers:
        raise ValueError(f"layer {layer} is out of range: the mask set has {mask_set.layers} layers (0..{mask_set.layers - 1})")
    heads, block = mask_set.heads, mask_set.block
    blocks = (mask_set.n + block - 1) // block
    kv_num = np.zeros((1, heads, blocks), np.int32)
    kv_idx = np.zeros((1, heads, blocks, blocks), np.int32)
    full_num = np.zeros((1, heads, blocks), np.int32)
    full_idx = np.zeros((1, heads, blocks, blocks), np.int32)
    lookup = np.zeros((heads, blocks, blocks), np.int32)
    bit_planes = [np.zeros((1, block, block), bool), np.ones((1, block, block), bool)]
    offset = 2
    for h in range(heads):
        csr = mask_set.csr(layer, h)
        bits = csr["bits"]
        # Bit t = i*B + j of a bitmask is bit t % 64 of word t // 64: little-endian bytes, little-endian bits.
        planes = np.unpackbits(bits.astype("<u8").view(np.uint8), axis=1, bitorder="little").astype(bool)
        bit_planes.append(planes.reshape(-1, block, block))
        row_ptr, col_idx, partial_idx = csr["row_ptr"], csr["col_idx"], csr["partial_idx"]
        for r in range(blocks):
            cols = col_idx[row_ptr[r]:row_ptr[r + 1]]
            parts = partial_idx[row_ptr[r]:row_ptr[r + 1]]
            full, partial = cols[parts < 0], cols[parts >= 0]
            full_num[0, h, r], kv_num[0, h, r] = len(full), len(partial)
            full_idx[0, h, r, :len(full)] = full
            kv_idx[0, h, r, :len(partial)] = partial
            lookup[h, r, full] = 1
            lookup[h, r, partial] = offset + parts[parts >= 0]
        offset += bits.shape[0]
    return {
        "kv_num_blocks": kv_num, "kv_indices": kv_idx,
        "full_kv_num_blocks": full_num, "full_kv_indices": full_idx,
        "lookup": lookup, "bits": np.concatenate(bit_planes, axis=0),
    }


def to_flex_block_mask(mask_set, layer, device="cpu"):
    """Layer `layer` of a MaskSet as a torch FlexAttention BlockMask (batch 1, one mask per head).

    Full blocks go to full_kv_*, partial blocks to kv_* with a mask_mod that reads their exact
    bitmasks, so flex_attention(q, k, v, block_mask=...) allows the same pairs as sparsa's engines.
    BLOCK_SIZE is the MaskSet's block (FlexAttention's kernels want 128 on GPUs: compile with block=128).
    Raises ImportError when PyTorch (with torch.nn.attention.flex_attention, 2.5 or newer) is missing.
    """
    try:
        import torch
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError as e:
        raise ImportError(
            "to_flex_block_mask needs PyTorch 2.5 or newer (torch.nn.attention.flex_attention); "
            f"it is not importable here ({e}). Install torch for this Python, or use flex_arrays(), "
            "which gives the same layout as numpy arrays") from e
    a = flex_arrays(mask_set, layer)
    t = {name: torch.from_numpy(value).to(device) for name, value in a.items()}
    lookup, bits, block = t["lookup"], t["bits"], mask_set.block

    def mask_mod(b, h, q_idx, kv_idx):
        return bits[lookup[h, q_idx // block, kv_idx // block], q_idx % block, kv_idx % block]

    kwargs = dict(full_kv_num_blocks=t["full_kv_num_blocks"], full_kv_indices=t["full_kv_indices"],
                  BLOCK_SIZE=block, mask_mod=mask_mod)
    if "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kwargs["seq_lengths"] = (mask_set.n, mask_set.n)
    return BlockMask.from_kv_blocks(t["kv_num_blocks"], t["kv_indices"], **kwargs)
