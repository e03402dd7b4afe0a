// The causal mask and the causal cut of a mask: see causal_mask.hpp.
#include "learn/causal_mask.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

namespace sparsa::learn {

namespace {

// The lower triangle of diagonal block r: bit (i * B + j) for i < rows, j <= i. [B * B / 64] words.
std::vector<uint64_t> triangle_bits(int32_t block, int64_t rows) {
    std::vector<uint64_t> bits(static_cast<size_t>(int64_t{block} * block / 64), 0);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j <= i; ++j) {
            const int64_t t = i * block + j;
            bits[static_cast<size_t>(t / 64)] |= uint64_t{1} << (t % 64);
        }
    return bits;
}

} // namespace

std::shared_ptr<const BlockMask> block_mask_causal(int64_t n, int32_t block) {
    if (n < 1) throw Error("causal mask: n = " + std::to_string(n) + " must be at least 1");
    if (!block_size_valid(block)) throw Error("causal mask: block size " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
    auto mask = std::make_shared<BlockMask>();
    mask->n = n;
    mask->block = block;
    const int64_t nb = mask->q_blocks();
    const std::vector<uint64_t> whole = triangle_bits(block, block);   // every diagonal block but a short last one
    mask->row_ptr.push_back(0);
    for (int64_t r = 0; r < nb; ++r) {
        for (int64_t c = 0; c < r; ++c) {
            mask->col_idx.push_back(static_cast<int32_t>(c));
            mask->partial_idx.push_back(-1);
        }
        const int64_t rows = std::min<int64_t>(block, n - r * block);
        mask->col_idx.push_back(static_cast<int32_t>(r));
        if (rows == 1) {
            mask->partial_idx.push_back(-1);   // one valid pair, allowed: a full block
        } else {
            mask->partial_idx.push_back(static_cast<int32_t>(mask->partial_blocks()));
            const auto bits = rows == block ? whole : triangle_bits(block, rows);
            mask->bits.insert(mask->bits.end(), bits.begin(), bits.end());
        }
        mask->row_ptr.push_back(static_cast<int64_t>(mask->col_idx.size()));
    }
    return mask;
}

MaskSet mask_set_causal(int64_t n, int32_t block, int64_t layers, int64_t heads) {
    const auto mask = block_mask_causal(n, block);
    return mask_set_make(layers, heads, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(layers * heads), mask));
}

BlockMask block_mask_restrict_causal(const BlockMask& mask) {
    BlockMask out;
    out.n = mask.n;
    out.block = mask.block;
    out.row_ptr.push_back(0);
    const int64_t words = mask.words_per_block();
    const std::vector<uint64_t> whole = triangle_bits(mask.block, mask.block);   // every diagonal block but a short last one
    for (int64_t r = 0; r < mask.q_blocks(); ++r) {
        for (int64_t e = mask.row_ptr[r]; e < mask.row_ptr[r + 1]; ++e) {
            const int32_t c = mask.col_idx[e];
            if (c > r) break;   // sorted: the rest are above the diagonal too
            const int32_t p = mask.partial_idx[e];
            if (c < r) {
                out.col_idx.push_back(c);
                if (p < 0) out.partial_idx.push_back(-1);
                else {
                    out.partial_idx.push_back(static_cast<int32_t>(out.partial_blocks()));
                    out.bits.insert(out.bits.end(), mask.partial_bits(p), mask.partial_bits(p) + words);
                }
                continue;
            }
            const int64_t rows = std::min<int64_t>(mask.block, mask.n - r * int64_t{mask.block});
            std::vector<uint64_t> bits = rows == mask.block ? whole : triangle_bits(mask.block, rows);
            if (p >= 0)
                for (int64_t w = 0; w < words; ++w) bits[static_cast<size_t>(w)] &= mask.partial_bits(p)[w];
            const bool any = std::any_of(bits.begin(), bits.end(), [](uint64_t w) { return w != 0; });
            if (!any) continue;
            out.col_idx.push_back(c);
            if (rows == 1) out.partial_idx.push_back(-1);   // its one valid pair is kept: full
            else {
                out.partial_idx.push_back(static_cast<int32_t>(out.partial_blocks()));
                out.bits.insert(out.bits.end(), bits.begin(), bits.end());
            }
        }
        out.row_ptr.push_back(static_cast<int64_t>(out.col_idx.size()));
    }
    return out;
}

MaskSet mask_set_restrict_causal(const MaskSet& set) {
    for (const auto& spec : set.content)
        if (spec) throw Error("causal teacher: a content-based head cannot be cut to its causal part here (use fixed masks)");
    std::unordered_map<const BlockMask*, std::shared_ptr<const BlockMask>> done;
    std::vector<std::shared_ptr<const BlockMask>> masks;
    masks.reserve(set.masks.size());
    for (const auto& m : set.masks) {
        auto it = done.find(m.get());
        if (it == done.end()) it = done.emplace(m.get(), std::make_shared<BlockMask>(block_mask_restrict_causal(*m))).first;
        masks.push_back(it->second);
    }
    MaskSet out = mask_set_make(set.layers, set.heads, std::move(masks));
    out.script_name = set.script_name;
    out.script_text = set.script_text;
    out.params = set.params;
    return out;
}

MaskSet mask_set_top_k_layout(int64_t n, int32_t block, int64_t heads, int64_t keep) {
    const int64_t blocks = (n + block - 1) / block;
    if (heads < 1) throw Error("top-k layout: heads is " + std::to_string(heads) + " (need at least 1)");
    if (keep < 1 || keep > blocks) {
        throw Error("top-k layout: keep is " + std::to_string(keep) + " blocks a row; at n = " + std::to_string(n) +
                    " with blocks of " + std::to_string(block) + " it must be 1 to " + std::to_string(blocks));
    }
    const auto causal = block_mask_causal(n, block);   // validates n and block
    BlockMask window;   // the last min(keep, r + 1) entries of each causal row: its diagonal last
    window.n = n;
    window.block = block;
    window.bits = causal->bits;
    window.row_ptr.push_back(0);
    for (int64_t r = 0; r < blocks; ++r) {
        const int64_t end = causal->row_ptr[static_cast<size_t>(r + 1)], first = std::max(causal->row_ptr[static_cast<size_t>(r)], end - keep);
        for (int64_t e = first; e < end; ++e) {
            window.col_idx.push_back(causal->col_idx[static_cast<size_t>(e)]);
            window.partial_idx.push_back(causal->partial_idx[static_cast<size_t>(e)]);
        }
        window.row_ptr.push_back(static_cast<int64_t>(window.col_idx.size()));
    }
    MaskSet set;
    set.n = n;
    set.block = block;
    set.layers = 1;
    set.heads = heads;
    for (int64_t h = 0; h < heads; ++h) set.masks.push_back(std::make_shared<const BlockMask>(window));
    return set;
}

int64_t top_k_layout_entries(int64_t n, int32_t block, int64_t keep) {
    const int64_t blocks = (n + block - 1) / block, full = std::max<int64_t>(0, blocks - keep);
    // rows 0 .. keep - 1 (or all) keep r + 1, the rest keep
    const int64_t short_rows = blocks - full;
    return short_rows * (short_rows + 1) / 2 + full * keep;
}

int64_t causal_block_count(int64_t n, int32_t block) {
    const int64_t nb = (n + block - 1) / block;
    return nb * (nb + 1) / 2;
}

} // namespace sparsa::learn
