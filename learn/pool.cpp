// Block-pooled attention: see pool.hpp.
#include "learn/pool.hpp"

#include "engine/error.hpp"
#include "io/npy.hpp"

#include <algorithm>
#include <cmath>

namespace sparsa::learn {

PooledAttention pooled_zeros(int64_t layers, int64_t heads, int64_t n, int32_t block) {
    if (!block_size_valid(block)) throw Error("block size " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
    PooledAttention p;
    p.layers = layers;
    p.heads = heads;
    p.n = n;
    p.block = block;
    const size_t size = static_cast<size_t>(layers * heads * p.blocks() * p.blocks());
    p.sum.assign(size, 0.0);
    p.max.assign(size, 0.0);
    p.row_max.assign(size, 0.0);
    return p;
}

double PooledAttention::row_share(int64_t l, int64_t h, int64_t qb, int64_t kb) const {
    const int64_t rows = std::min<int64_t>(block, n - qb * block);
    return sum[index(l, h, qb, kb)] / static_cast<double>(rows);
}

double PooledAttention::row_max_share(int64_t l, int64_t h, int64_t qb, int64_t kb) const {
    double total = 0;
    for (int64_t c = 0; c < blocks(); ++c) total += row_max[index(l, h, qb, c)];
    return total > 0 ? row_max[index(l, h, qb, kb)] / total : 0.0;
}

void pooled_add_layer(PooledAttention& pooled, int64_t layer, const Tensor& q, const Tensor& k, bool causal, double scale) {
    const TensorShape s = q.shape;
    if (!(k.shape == s) || s.batch != 1 || s.heads != pooled.heads || s.n != pooled.n || layer < 0 || layer >= pooled.layers)
        throw Error("pool: q " + tensor_shape_text(q.shape) + " and k " + tensor_shape_text(k.shape) + " do not fit [1, " +
                    std::to_string(pooled.heads) + ", " + std::to_string(pooled.n) + ", d] at layer " + std::to_string(layer));
    if (scale == 0) scale = 1.0 / std::sqrt(static_cast<double>(s.d));
    const int64_t n = s.n, B = pooled.block;
    std::vector<double> row(static_cast<size_t>(n)), share(static_cast<size_t>(pooled.blocks()));
    for (int64_t h = 0; h < s.heads; ++h) {
        for (int64_t i = 0; i < n; ++i) {
            const float* qi = q.row(0, h, i);
            const int64_t keys = causal ? i + 1 : n;
            double top = -INFINITY;
            for (int64_t j = 0; j < keys; ++j) {
                const float* kj = k.row(0, h, j);
                double dot = 0;
                for (int64_t c = 0; c < s.d; ++c) dot += static_cast<double>(qi[c]) * kj[c];
                row[j] = scale * dot;
                top = std::max(top, row[j]);
            }
            double total = 0;
            for (int64_t j = 0; j < keys; ++j) total += (row[j] = std::exp(row[j] - top));
            std::fill(share.begin(), share.end(), 0.0);
            for (int64_t j = 0; j < keys; ++j) {
                const double p = row[j] / total;
                const int64_t at = pooled.index(layer, h, i / B, j / B);
                pooled.sum[at] += p;
                pooled.max[at] = std::max(pooled.max[at], p);
                share[static_cast<size_t>(j / B)] += p;
            }
            for (int64_t c = 0; c <= (keys - 1) / B; ++c) {
                double& m = pooled.row_max[pooled.index(layer, h, i / B, c)];
                m = std::max(m, share[static_cast<size_t>(c)]);
            }
        }
    }
}

void pooled_finish(PooledAttention& pooled, int64_t inputs) {
    pooled.inputs = inputs;
    if (inputs <= 1) return;
    for (double& v : pooled.sum) v /= static_cast<double>(inputs);
    for (double& v : pooled.max) v /= static_cast<double>(inputs);
    for (double& v : pooled.row_max) v /= static_cast<double>(inputs);
}

double pooled_recall(const PooledAttention& pooled, int64_t layer, int64_t head, const BlockMask& mask) {
    double kept = 0;
    for (int64_t r = 0; r < mask.q_blocks(); ++r)
        for (int64_t e = mask.row_ptr[r]; e < mask.row_ptr[r + 1]; ++e) kept += pooled.sum[pooled.index(layer, head, r, mask.col_idx[e])];
    return kept / static_cast<double>(pooled.n);
}

QkDump qk_dump_load(const std::vector<std::string>& q_paths, const std::vector<std::string>& k_paths) {
    if (q_paths.empty() || q_paths.size() != k_paths.size())
        throw Error("Q/K dumps: give one Q file and one K file per layer (got " + std::to_string(q_paths.size()) + " and " +
                    std::to_string(k_paths.size()) + ")");
    QkDump dump;
    std::vector<int64_t> shape0;
    auto load = [&](const std::string& path) {
        const NpyArray a = npy_load(path);
        if (a.shape.size() != 3)
            throw Error(path + ": shape " + npy_shape_text(a.shape) + " is not [heads, n, d] (save one layer per file)");
        if (shape0.empty()) shape0 = a.shape;
        if (a.shape != shape0)
            throw Error(path + ": shape " + npy_shape_text(a.shape) + " differs from the first file's " + npy_shape_text(shape0) +
                        " (every layer's Q and K must have one shape)");
        Tensor t = tensor_zeros<float>({1, a.shape[0], a.shape[1], a.shape[2]});
        if (a.dtype == NpyDtype::float32) {
            const auto v = npy_array_values<float>(a, path);
            std::copy(v.begin(), v.end(), t.data.begin());
        } else if (a.dtype == NpyDtype::float64) {
            const auto v = npy_array_values<double>(a, path);
            for (size_t e = 0; e < v.size(); ++e) t.data[e] = static_cast<float>(v[e]);
        } else {
            throw Error(path + ": dtype " + npy_dtype_name(a.dtype) + " is not float32 or float64 (convert with .astype('float32'))");
        }
        tensor_check_finite(t, path);
        return t;
    };
    for (size_t l = 0; l < q_paths.size(); ++l) {
        dump.q.push_back(load(q_paths[l]));
        dump.k.push_back(load(k_paths[l]));
    }
    return dump;
}

} // namespace sparsa::learn
