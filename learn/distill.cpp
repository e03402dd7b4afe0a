// Distillation methods: see distill.hpp.
//
// Index: [SECTION] block choices, [SECTION] oracle, [SECTION] recall through the engine,
//        [SECTION] search, [SECTION] gate, [SECTION] fixed baselines
#include "learn/distill.hpp"

#include "dsl/script.hpp"
#include "io/atomic_file.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"
#include "learn/causal_mask.hpp"
#include "learn/teacher.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace sparsa::learn {

// [SECTION] block choices

int64_t blocks_per_row(double density, int64_t blocks) {
    return std::clamp<int64_t>(std::llround(density * static_cast<double>(blocks)), 1, blocks);
}

BlockMask block_mask_from_rows(int64_t n, int32_t block, const std::vector<std::vector<int32_t>>& rows) {
    BlockMask mask = block_mask_empty(n, block);
    mask.row_ptr.assign(1, 0);
    for (auto row : rows) {
        std::sort(row.begin(), row.end());
        row.erase(std::unique(row.begin(), row.end()), row.end());
        mask.col_idx.insert(mask.col_idx.end(), row.begin(), row.end());
        mask.row_ptr.push_back(static_cast<int64_t>(mask.col_idx.size()));
    }
    mask.partial_idx.assign(mask.col_idx.size(), -1);
    block_mask_validate(mask, "block choice");
    return mask;
}

namespace {

// Key blocks of row r by descending score (ties: lower block first).
std::vector<int32_t> row_order(const std::vector<double>& scores, int64_t blocks, int64_t r) {
    std::vector<int32_t> order(static_cast<size_t>(blocks));
    std::iota(order.begin(), order.end(), 0);
    const double* row = scores.data() + r * blocks;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    return order;
}

} // namespace

BlockMask block_mask_top_k(int64_t n, int32_t block, const std::vector<double>& scores, int64_t keep, bool keep_diagonal,
                           bool causal) {
    const int64_t blocks = (n + block - 1) / block;
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
    for (int64_t r = 0; r < blocks; ++r) {
        if (keep_diagonal) rows[r].push_back(static_cast<int32_t>(r));
        for (int32_t c : row_order(scores, blocks, r)) {
            if (static_cast<int64_t>(rows[r].size()) >= keep) break;
            if (causal && c > r) continue;
            if (!(keep_diagonal && c == r)) rows[r].push_back(c);
        }
    }
    return block_mask_from_rows(n, block, rows);
}

BlockMask block_mask_top_share(int64_t n, int32_t block, const std::vector<double>& scores, double share, bool keep_diagonal) {
    const int64_t blocks = (n + block - 1) / block;
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
    for (int64_t r = 0; r < blocks; ++r) {
        double total = 0, kept = 0;
        for (int64_t c = 0; c < blocks; ++c) total += scores[r * blocks + c];
        if (keep_diagonal) {
            rows[r].push_back(static_cast<int32_t>(r));
            kept += scores[r * blocks + r];
        }
        for (int32_t c : row_order(scores, blocks, r)) {
            if (kept >= share * total) break;
            if (keep_diagonal && c == r) continue;
            rows[r].push_back(c);
            kept += scores[r * blocks + c];
        }
        if (rows[r].empty()) rows[r].push_back(row_order(scores, blocks, r)[0]);
    }
    return block_mask_from_rows(n, block, rows);
}

double mask_set_block_density(const MaskSet& set) {
    double kept = 0;
    for (int64_t l = 0; l < set.layers; ++l)
        for (int64_t h = 0; h < set.heads; ++h) {
            const BlockMask& m = set.at(l, h);
            kept += static_cast<double>(m.kept_blocks()) / static_cast<double>(m.q_blocks() * m.k_blocks());
        }
    return kept / static_cast<double>(set.layers * set.heads);
}

// [SECTION] oracle

MaskSet oracle_masks(const PooledAttention& pooled, int64_t keep, bool causal) {
    const int64_t blocks = pooled.blocks();
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t l = 0; l < pooled.layers; ++l)
        for (int64_t h = 0; h < pooled.heads; ++h) {
            const auto first = pooled.sum.begin() + pooled.index(l, h, 0, 0);
            const std::vector<double> scores(first, first + blocks * blocks);
            masks.push_back(std::make_shared<BlockMask>(block_mask_top_k(pooled.n, pooled.block, scores, keep, false, causal)));
        }
    return mask_set_make(pooled.layers, pooled.heads, std::move(masks));
}

// [SECTION] recall through the engine

Tensor dense_lse(const Tensor& q, const Tensor& k, int32_t block, bool causal) {
    const MaskSet dense = causal ? mask_set_causal(q.shape.n, block, 1, q.shape.heads) : mask_set_dense(q.shape.n, block, 1, q.shape.heads);
    AttentionOptions options;
    options.threads = 1;
    return attention_forward(q, k, tensor_zeros<float>(k.shape), dense, 0, options).lse;
}

std::vector<double> mask_recall(const Tensor& q, const Tensor& k, const Tensor& dense, const MaskSet& masks, int64_t layer) {
    AttentionOptions options;
    options.threads = 1;
    const Tensor lse = attention_forward(q, k, tensor_zeros<float>(k.shape), masks, layer, options).lse;
    const int64_t n = q.shape.n;
    std::vector<double> recall(static_cast<size_t>(q.shape.heads), 0.0);
    for (int64_t h = 0; h < q.shape.heads; ++h) {
        for (int64_t i = 0; i < n; ++i) {
            const double kept = lse.at(0, h, i, 0), all = dense.at(0, h, i, 0);
            recall[h] += std::isfinite(kept) ? std::min(1.0, std::exp(kept - all)) : 0.0;
        }
        recall[h] /= static_cast<double>(n);
    }
    return recall;
}

// [SECTION] search

std::shared_ptr<const BlockMask> expression_compile(const std::string& expression, int64_t n, int32_t block) {
    const MaskSet set = script_text_compile("block " + std::to_string(block) + "\nattend = " + expression + "\n", "candidate.pat", n, block);
    return set.masks[0];
}

MaskSet script_text_compile(const std::string& text, const std::string& name, int64_t n, int32_t block) {
    const dsl::ScriptPtr script = dsl::script_parse(text, name);
    dsl::CompileOptions options;
    options.n = n;
    options.block = block;
    options.threads = 1;
    return dsl::script_compile(*script, options).masks;
}

std::vector<SearchCandidate> search_candidates(int64_t n, int32_t block) {
    const int64_t B = block, blocks = (n + B - 1) / B;
    std::vector<std::string> expressions;
    auto add = [&](const std::string& e) { expressions.push_back(e); };
    for (int64_t r = 0; r < blocks; r = r == 0 ? 1 : 2 * r) add("band(" + std::to_string(r) + ")");
    for (int64_t w = B / 2; w < n; w *= 2) add("window(" + std::to_string(w) + ")");
    for (int64_t w = B / 2; w < n; w *= 2) add("columns(first(" + std::to_string(B) + ")) | window(" + std::to_string(w) + ")");
    for (int64_t r = 0; r < blocks; r = r == 0 ? 1 : 2 * r) add("columns(first(" + std::to_string(B) + ")) | band(" + std::to_string(r) + ")");
    for (int64_t r = 0; r < blocks; r = r == 0 ? 1 : 2 * r) add("global(first(" + std::to_string(B) + ")) | band(" + std::to_string(r) + ")");
    for (int64_t dil = 2; dil <= 8; dil *= 2)
        for (int64_t w = B / dil; w * dil < n; w *= 2) add("dilated(" + std::to_string(w) + ", " + std::to_string(dil) + ")");
    for (int64_t s = B; s < n; s *= 2) add("strided(" + std::to_string(s) + ") | band(0)");
    for (int64_t c = 2 * B; c < n; c *= 2) add("chunk(" + std::to_string(c) + ")");
    add("dense");
    std::vector<SearchCandidate> out;
    for (const std::string& e : expressions) {
        SearchCandidate c;
        c.expression = e;
        c.mask = expression_compile(e, n, block);
        c.density = static_cast<double>(c.mask->kept_blocks()) / static_cast<double>(blocks * blocks);
        out.push_back(std::move(c));
    }
    return out;
}

namespace {

// A table of search_candidates(n, block) with no recall yet.
SearchTable search_table_empty(int64_t n, int32_t block, int64_t layers, int64_t heads, bool causal) {
    SearchTable t;
    t.layers = layers;
    t.heads = heads;
    t.n = n;
    t.block = block;
    t.causal = causal;
    t.candidates = search_candidates(n, block);
    return t;
}

} // namespace

SearchTable search_table_build(const AttentionSample& sample, int32_t block, int threads) {
    if (sample.inputs() < 1) throw Error("search: no inputs to measure recall on");
    SearchTable t = search_table_empty(sample.q[0][0].shape.n, block, sample.layers(), sample.q[0][0].shape.heads, sample.causal);
    const int64_t C = static_cast<int64_t>(t.candidates.size());
    t.recall.assign(static_cast<size_t>(C * t.layers * t.heads), 0.0);
    parallel_for(C, threads, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
            const MaskSet set = search_candidate_set(t, c);
            for (int64_t b = 0; b < sample.inputs(); ++b)
                for (int64_t l = 0; l < t.layers; ++l) {
                    const auto r = mask_recall(sample.q[b][l], sample.k[b][l], sample.lse[b][l], set, 0);
                    for (int64_t h = 0; h < t.heads; ++h)
                        t.recall[(c * t.layers + l) * t.heads + h] += r[h] / static_cast<double>(sample.inputs());
                }
        }
    });
    return t;
}

MaskSet search_candidate_set(const SearchTable& t, int64_t c) {
    std::vector<std::shared_ptr<const BlockMask>> same(static_cast<size_t>(t.heads), t.candidates[static_cast<size_t>(c)].mask);
    return t.causal ? mask_set_restrict_causal(mask_set_make(1, t.heads, same)) : mask_set_make(1, t.heads, same);
}

SearchTable search_table_from_recall(int64_t n, int32_t block, int64_t layers, int64_t heads, bool causal, std::vector<double> recall) {
    SearchTable t = search_table_empty(n, block, layers, heads, causal);
    const int64_t want = static_cast<int64_t>(t.candidates.size()) * layers * heads;
    if (static_cast<int64_t>(recall.size()) != want) {
        throw Error("search: " + std::to_string(recall.size()) + " recall values given, but " + std::to_string(t.candidates.size()) +
                    " candidates x " + std::to_string(layers) + " layers x " + std::to_string(heads) + " heads need " + std::to_string(want));
    }
    t.recall = std::move(recall);
    return t;
}

namespace {

SearchResult search_finish(const SearchTable& t, std::vector<int64_t> choice, const std::string& rule) {
    SearchResult r;
    r.choice = std::move(choice);
    char line[512];
    r.script = "# Per-head patterns found by `sparsa learn distill --method search` (" + rule + ").\n"
               "# Each comment gives the head's recall (share of the teacher's attention mass kept, averaged over\n"
               "# query rows and the calibration inputs, from the training stream) and its block density.\n";
    r.script += "block " + std::to_string(t.block) + "\nheads " + std::to_string(t.heads) + "\nlayers " + std::to_string(t.layers) +
"\n" + (t.causal ? "causal\n" : "") + "\nattend = dense\n";
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t l = 0; l < t.layers; ++l)
        for (int64_t h = 0; h < t.heads; ++h) {
            const int64_t c = r.choice[l * t.heads + h];
            r.recall.push_back(t.at(c, l, h));
            std::snprintf(line, sizeof line, "attend[layer %lld, head %lld] = %-40s # recall %.4f, density %.4f\n",
                          static_cast<long long>(l), static_cast<long long>(h), t.candidates[c].expression.c_str(),
                          t.at(c, l, h), t.candidates[c].density);
            r.script += line;
            masks.push_back(t.candidates[c].mask);
        }
    r.masks = mask_set_make(t.layers, t.heads, std::move(masks));
    r.masks.script_name = "search.pat";
    r.masks.script_text = r.script;
    return r;
}

} // namespace

SearchResult search_by_share(const SearchTable& t, double share) {
    std::vector<int64_t> choice;
    const int64_t C = static_cast<int64_t>(t.candidates.size());
    for (int64_t l = 0; l < t.layers; ++l)
        for (int64_t h = 0; h < t.heads; ++h) {
            int64_t best = -1;
            for (int64_t c = 0; c < C; ++c) {
                if (t.at(c, l, h) < share) continue;
                if (best < 0 || t.candidates[c].density < t.candidates[best].density ||
                    (t.candidates[c].density == t.candidates[best].density && t.at(c, l, h) > t.at(best, l, h)))
                    best = c;
            }
            choice.push_back(best >= 0 ? best : C - 1);   // the last candidate is dense
        }
    char rule[64];
    std::snprintf(rule, sizeof rule, "target share %.3f", share);
    return search_finish(t, std::move(choice), rule);
}

SearchResult search_by_density(const SearchTable& t, double density) {
    std::vector<int64_t> choice;
    const int64_t C = static_cast<int64_t>(t.candidates.size());
    for (int64_t l = 0; l < t.layers; ++l)
        for (int64_t h = 0; h < t.heads; ++h) {
            int64_t best = -1, cheapest = 0;
            for (int64_t c = 0; c < C; ++c) {
                if (t.candidates[c].density < t.candidates[cheapest].density) cheapest = c;
                if (t.candidates[c].density > density + 1e-12) continue;
                if (best < 0 || t.at(c, l, h) > t.at(best, l, h)) best = c;
            }
            choice.push_back(best >= 0 ? best : cheapest);
        }
    char rule[64];
    std::snprintf(rule, sizeof rule, "block density at most %.4f", density);
    return search_finish(t, std::move(choice), rule);
}

// [SECTION] gate

std::string gate_query_name(GateQuery query) { return query == GateQuery::rows ? "rows" : "block"; }
std::string gate_key_name(GateKey key) { return key == GateKey::bounds ? "bounds" : key == GateKey::keys ? "keys" : "pooled"; }

GateKey gate_key_parse(const std::string& text) {
    if (text == "pooled") return GateKey::pooled;
    if (text == "bounds") return GateKey::bounds;
    if (text == "keys") return GateKey::keys;
    throw Error("gate: the key side must be 'keys' (every key projected and scored, the block's share summed), 'pooled' (mean and max of "
                "the block's keys, as SeerAttention) or 'bounds' (the largest and smallest projected key per unit, as Quest); got '" +
                text + "'");
}

GateQuery gate_query_parse(const std::string& text) {
    if (text == "block") return GateQuery::block;
    if (text == "rows") return GateQuery::rows;
    throw Error("gate: the query side must be 'block' (pooled queries, as SeerAttention) or 'rows' (each row, pooled by log-sum-exp); got '" +
                text + "'");
}

BlockGate gate_init(int64_t layers, int64_t heads, int64_t head_dim, int64_t hidden, int32_t block, uint64_t seed, GateQuery query,
                    GateKey key) {
    if (layers < 1 || heads < 1 || head_dim < 1 || hidden < 1) throw Error("gate: layers, heads, head_dim and hidden must be at least 1");
    BlockGate g;
    g.query = query;
    g.key = key;
    g.layers = layers;
    g.heads = heads;
    g.head_dim = head_dim;
    g.hidden = hidden;
    g.block = block;
    const Tensor noise = tensor_random({1, 1, 1, layers * heads * g.per_head()}, seed);
    const double scale = 1.0 / std::sqrt(2.0 * static_cast<double>(head_dim));
    g.params.resize(noise.data.size());
    for (size_t e = 0; e < g.params.size(); ++e) g.params[e] = scale * noise.data[e];
    return g;
}

std::vector<double> gate_features(const Tensor& x, int64_t head, int32_t block) {
    const int64_t n = x.shape.n, d = x.shape.d, blocks = (n + block - 1) / block;
    std::vector<double> f(static_cast<size_t>(blocks * 2 * d), 0.0);
    for (int64_t r = 0; r < blocks; ++r) {
        double* row = f.data() + r * 2 * d;
        const int64_t begin = r * block, end = std::min<int64_t>(n, begin + block);
        for (int64_t j = 0; j < d; ++j) row[d + j] = -INFINITY;
        for (int64_t i = begin; i < end; ++i)
            for (int64_t j = 0; j < d; ++j) {
                const double v = x.at(0, head, i, j);
                row[j] += v / static_cast<double>(end - begin);
                row[d + j] = std::max(row[d + j], v);
            }
    }
    return f;
}

namespace {

// a = f w: f [rows, in], w [in, out] -> [rows, out].
std::vector<double> matmul(const std::vector<double>& f, const double* w, int64_t rows, int64_t in, int64_t out) {
    std::vector<double> a(static_cast<size_t>(rows * out), 0.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < in; ++i) {
            const double v = f[r * in + i];
            for (int64_t o = 0; o < out; ++o) a[r * out + o] += v * w[i * out + o];
        }
    return a;
}

struct GateForward {
    int64_t n = 0, blocks = 0, q_rows = 0, k_rows = 0;
    std::vector<double> fq, a;          // query features [q_rows, q_in] and their projection [q_rows, hidden]
    std::vector<double> fk, b;          // key features [k_rows, k_in] and their projection [k_rows, hidden]
    std::vector<double> hi, lo;         // bounds: per key block and hidden unit, the largest and smallest b [blocks, hidden]
    std::vector<int64_t> hi_at, lo_at;  // bounds: the key row each comes from
    std::vector<double> s;              // keys: each query row's score of each key [q_rows, n]
    std::vector<double> t;              // scores of the query side's rows against key blocks [q_rows, blocks]
    std::vector<double> row_p;          // row_targets: each row's predicted distribution, softmax of t [n, blocks]
    std::vector<double> p;              // predicted [blocks, blocks], rows sum to 1
};

// Rows of one head as features: [n, head_dim].
std::vector<double> gate_rows(const Tensor& x, int64_t head) {
    const int64_t n = x.shape.n, d = x.shape.d;
    std::vector<double> f(static_cast<size_t>(n * d));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) f[i * d + j] = x.at(0, head, i, j);
    return f;
}

// log sum_{i in query block r} exp t_ic, and (when w is given) the softmax weights of those rows.
double rows_lse(const GateForward& f, int32_t block, int64_t r, int64_t c, std::vector<double>* w = nullptr) {
    const int64_t begin = r * block, end = std::min(f.n, begin + block);
    double m = -INFINITY, sum = 0;
    for (int64_t i = begin; i < end; ++i) m = std::max(m, f.t[i * f.blocks + c]);
    for (int64_t i = begin; i < end; ++i) sum += std::exp(f.t[i * f.blocks + c] - m);
    if (w) {
        w->clear();
        for (int64_t i = begin; i < end; ++i) w->push_back(std::exp(f.t[i * f.blocks + c] - m) / sum);
    }
    return m + std::log(sum);
}

GateForward gate_forward(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k) {
    if (layer < 0 || layer >= gate.layers || head < 0 || head >= gate.heads || q.shape.d != gate.head_dim || !(q.shape == k.shape))
        throw Error("gate: q " + tensor_shape_text(q.shape) + " or (layer " + std::to_string(layer) + ", head " + std::to_string(head) +
                    ") does not fit a gate of " + std::to_string(gate.layers) + " layers x " + std::to_string(gate.heads) +
                    " heads, head width " + std::to_string(gate.head_dim));
    const int64_t B = gate.block, hid = gate.hidden;
    GateForward f;
    f.n = q.shape.n;
    f.blocks = (f.n + B - 1) / B;
    const bool rows = gate.query == GateQuery::rows, bounds = gate.key == GateKey::bounds, keys = gate.key == GateKey::keys;
    f.q_rows = rows ? f.n : f.blocks;
    f.k_rows = bounds || keys ? f.n : f.blocks;
    f.fq = rows ? gate_rows(q, head) : gate_features(q, head, gate.block);
    f.fk = bounds || keys ? gate_rows(k, head) : gate_features(k, head, gate.block);
    const double* w = gate.at(layer, head);
    f.a = matmul(f.fq, w, f.q_rows, gate.q_in(), hid);
    f.b = matmul(f.fk, w + gate.q_in() * hid, f.k_rows, gate.k_in(), hid);
    if (bounds) {
        f.hi.assign(static_cast<size_t>(f.blocks * hid), -INFINITY);
        f.lo.assign(static_cast<size_t>(f.blocks * hid), INFINITY);
        f.hi_at.assign(f.hi.size(), 0);
        f.lo_at.assign(f.lo.size(), 0);
        for (int64_t j = 0; j < f.n; ++j)
            for (int64_t h = 0; h < hid; ++h) {
                const int64_t e = j / B * hid + h;
                const double v = f.b[j * hid + h];
                if (v > f.hi[e]) f.hi[e] = v, f.hi_at[e] = j;
                if (v < f.lo[e]) f.lo[e] = v, f.lo_at[e] = j;
            }
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(hid));
    f.t.resize(static_cast<size_t>(f.q_rows * f.blocks));
    if (keys) {   // s_rj = a_r . b_j * scale; t_rc = log sum_{j in c} exp s_rj
        f.s.resize(static_cast<size_t>(f.q_rows * f.n));
        for (int64_t r = 0; r < f.q_rows; ++r)
            for (int64_t j = 0; j < f.n; ++j) {
                double dot = 0;
                for (int64_t h = 0; h < hid; ++h) dot += f.a[r * hid + h] * f.b[j * hid + h];
                f.s[r * f.n + j] = dot * scale;
            }
        for (int64_t r = 0; r < f.q_rows; ++r)
            for (int64_t c = 0; c < f.blocks; ++c) {
                const double* sr = f.s.data() + r * f.n;
                const int64_t begin = c * B, end = std::min(f.n, begin + B);
                const double m = *std::max_element(sr + begin, sr + end);
                double sum = 0;
                for (int64_t j = begin; j < end; ++j) sum += std::exp(sr[j] - m);
                f.t[r * f.blocks + c] = m + std::log(sum);
            }
    } else {   // t_rc = a_r . b_c * scale (pooled), or sum_h max(a_rh hi_ch, a_rh lo_ch) * scale (bounds)
        for (int64_t r = 0; r < f.q_rows; ++r)
            for (int64_t c = 0; c < f.blocks; ++c) {
                double s = 0;
                for (int64_t h = 0; h < hid; ++h) {
                    const double a = f.a[r * hid + h];
                    s += bounds ? std::max(a * f.hi[c * hid + h], a * f.lo[c * hid + h]) : a * f.b[c * hid + h];
                }
                f.t[r * f.blocks + c] = s * scale;
            }
    }
    f.p.assign(static_cast<size_t>(f.blocks * f.blocks), 0.0);
    if (gate.row_targets) {   // each row's own distribution over key blocks; a block row's is their largest share, normalised
        f.row_p = f.t;
        for (int64_t i = 0; i < f.n; ++i) {
            double* row = f.row_p.data() + i * f.blocks;
            const double top = *std::max_element(row, row + f.blocks);
            double total = 0;
            for (int64_t c = 0; c < f.blocks; ++c) total += (row[c] = std::exp(row[c] - top));
            for (int64_t c = 0; c < f.blocks; ++c) row[c] /= total;
            for (int64_t c = 0; c < f.blocks; ++c) f.p[i / B * f.blocks + c] = std::max(f.p[i / B * f.blocks + c], row[c]);
        }
        for (int64_t r = 0; r < f.blocks; ++r) {   // normalised over the row of blocks
            double total = 0;
            for (int64_t c = 0; c < f.blocks; ++c) total += f.p[r * f.blocks + c];
            for (int64_t c = 0; c < f.blocks; ++c) f.p[r * f.blocks + c] /= total;
        }
        return f;
    }
    for (int64_t r = 0; r < f.blocks; ++r) {
        double top = -INFINITY;
        for (int64_t c = 0; c < f.blocks; ++c) {
            const double s = rows ? rows_lse(f, gate.block, r, c) : f.t[r * f.blocks + c];
            f.p[r * f.blocks + c] = s;
            top = std::max(top, s);
        }
        double total = 0;
        for (int64_t c = 0; c < f.blocks; ++c) total += (f.p[r * f.blocks + c] = std::exp(f.p[r * f.blocks + c] - top));
        for (int64_t c = 0; c < f.blocks; ++c) f.p[r * f.blocks + c] /= total;
    }
    return f;
}

// a = fq wq, b = fk wk: adds dwq = fq^T da and dwk = fk^T db to grad ([per_head()]).
void gate_project_backward(const BlockGate& gate, const GateForward& f, const std::vector<double>& da, const std::vector<double>& db,
                           double* grad) {
    const int64_t qin = gate.q_in(), kin = gate.k_in(), hid = gate.hidden;
    for (int64_t r = 0; r < f.q_rows; ++r)
        for (int64_t i = 0; i < qin; ++i)
            for (int64_t h = 0; h < hid; ++h) grad[i * hid + h] += f.fq[r * qin + i] * da[r * hid + h];
    for (int64_t r = 0; r < f.k_rows; ++r)
        for (int64_t i = 0; i < kin; ++i)
            for (int64_t h = 0; h < hid; ++h) grad[qin * hid + i * hid + h] += f.fk[r * kin + i] * db[r * hid + h];
}

// Adds to grad ([per_head()]) the gradient of the gate's parameters given dt, the gradient of the
// query side's row scores t ([q_rows, blocks]).
void gate_backward(const BlockGate& gate, const GateForward& f, const std::vector<double>& dt, double* grad) {
    const int64_t blocks = f.blocks, hid = gate.hidden;
    const bool bounds = gate.key == GateKey::bounds;
    if (gate.key == GateKey::keys) {   // t_rc = lse_{j in c} s_rj: ds_rj = dt_rc softmax_{j in c}(s_rj); s = a b^T * scale
        const double s = 1.0 / std::sqrt(static_cast<double>(hid));
        std::vector<double> da(static_cast<size_t>(f.q_rows * hid), 0.0), db(static_cast<size_t>(f.n * hid), 0.0);
        for (int64_t r = 0; r < f.q_rows; ++r)
            for (int64_t j = 0; j < f.n; ++j) {
                const int64_t c = j / gate.block;
                const double d = dt[r * blocks + c] * std::exp(f.s[r * f.n + j] - f.t[r * blocks + c]) * s;
                if (d == 0) continue;
                for (int64_t h = 0; h < hid; ++h) {
                    da[r * hid + h] += d * f.b[j * hid + h];
                    db[j * hid + h] += d * f.a[r * hid + h];
                }
            }
        gate_project_backward(gate, f, da, db, grad);
        return;
    }
    // t_rc = s sum_h a_rh b_ch (pooled keys), or s sum_h max(a_rh hi_ch, a_rh lo_ch) (bounds: the
    // larger is hi when a_rh >= 0); hi and lo pass their gradient to the key row they come from.
    const double s = 1.0 / std::sqrt(static_cast<double>(hid));
    std::vector<double> da(static_cast<size_t>(f.q_rows * hid), 0.0), db(static_cast<size_t>(f.k_rows * hid), 0.0);
    std::vector<double> dhi(bounds ? f.hi.size() : 0, 0.0), dlo(bounds ? f.lo.size() : 0, 0.0);
    for (int64_t r = 0; r < f.q_rows; ++r)
        for (int64_t c = 0; c < blocks; ++c) {
            const double d = dt[r * blocks + c] * s;
            if (d == 0) continue;
            for (int64_t h = 0; h < hid; ++h) {
                const double a = f.a[r * hid + h];
                if (!bounds) {
                    da[r * hid + h] += d * f.b[c * hid + h];
                    db[c * hid + h] += d * a;
                } else if (a >= 0) {
                    da[r * hid + h] += d * f.hi[c * hid + h];
                    dhi[c * hid + h] += d * a;
                } else {
                    da[r * hid + h] += d * f.lo[c * hid + h];
                    dlo[c * hid + h] += d * a;
                }
            }
        }
    if (bounds)
        for (size_t e = 0; e < dhi.size(); ++e) {
            const int64_t h = static_cast<int64_t>(e) % hid;
            db[f.hi_at[e] * hid + h] += dhi[e];
            db[f.lo_at[e] * hid + h] += dlo[e];
        }
    gate_project_backward(gate, f, da, db, grad);
}

} // namespace

std::vector<double> gate_predict(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k) {
    return gate_forward(gate, layer, head, q, k).p;
}

double gate_loss(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k,
                 const std::vector<double>& target, double* grad, double scale) {
    if (gate.row_targets) throw Error("gate: this gate learns each row's own target: use gate_loss_rows");
    const GateForward f = gate_forward(gate, layer, head, q, k);
    const int64_t blocks = f.blocks;
    if (static_cast<int64_t>(target.size()) != blocks * blocks)
        throw Error("gate: the target has " + std::to_string(target.size()) + " entries, expected blocks^2 = " + std::to_string(blocks * blocks));
    double loss = 0;
    for (size_t e = 0; e < target.size(); ++e)
        if (target[e] > 0) loss += target[e] * (std::log(target[e]) - std::log(std::max(f.p[e], 1e-300)));
    loss /= static_cast<double>(blocks);
    if (!grad) return loss;
    // dS = (p - target) / blocks. The scores of the query side's rows: t = S for block queries;
    // for row queries S_IJ = lse_{i in I} t_iJ, so dt_iJ = dS_IJ softmax_{i in I}(t_iJ).
    const bool rows = gate.query == GateQuery::rows;
    std::vector<double> dt(static_cast<size_t>(f.q_rows * blocks), 0.0), w;
    for (int64_t r = 0; r < blocks; ++r)
        for (int64_t c = 0; c < blocks; ++c) {
            const double ds = (f.p[r * blocks + c] - target[r * blocks + c]) / static_cast<double>(blocks) * scale;
            if (!rows) {
                dt[r * blocks + c] = ds;
                continue;
            }
            rows_lse(f, gate.block, r, c, &w);
            for (size_t i = 0; i < w.size(); ++i) dt[(r * gate.block + static_cast<int64_t>(i)) * blocks + c] = ds * w[i];
        }
    gate_backward(gate, f, dt, grad);
    return loss * scale;
}

std::vector<double> row_block_shares(const Tensor& q, const Tensor& k, int64_t head, int32_t block, bool causal) {
    const int64_t n = q.shape.n, d = q.shape.d, blocks = (n + block - 1) / block;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<double> out(static_cast<size_t>(n * blocks), 0.0), s(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const int64_t keys = causal ? i + 1 : n;
        double top = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
            double dot = 0;
            for (int64_t e = 0; e < d; ++e) dot += static_cast<double>(q.at(0, head, i, e)) * k.at(0, head, j, e);
            top = std::max(top, s[j] = dot * scale);
        }
        double total = 0;
        for (int64_t j = 0; j < keys; ++j) total += (s[j] = std::exp(s[j] - top));
        for (int64_t j = 0; j < keys; ++j) out[i * blocks + j / block] += s[j] / total;
    }
    return out;
}

BlockGate gate_identity(int64_t layers, int64_t heads, int64_t head_dim, int32_t block, bool causal) {
    BlockGate gate = gate_init(layers, heads, head_dim, head_dim, block, 1, GateQuery::rows, GateKey::keys);
    gate.row_targets = true;
    gate.causal = causal;
    for (int64_t l = 0; l < layers; ++l)
        for (int64_t h = 0; h < heads; ++h) {
            double* w = gate.at(l, h);   // wq [head_dim, hidden] then wk [head_dim, hidden]
            std::fill(w, w + gate.per_head(), 0.0);
            for (int64_t i = 0; i < head_dim; ++i) {
                w[i * head_dim + i] = 1.0;
                w[head_dim * head_dim + i * head_dim + i] = 1.0;
            }
        }
    return gate;
}

double gate_loss_rows(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k,
                      const std::vector<double>& target, double* grad, double scale) {
    if (!gate.row_targets) throw Error("gate: this gate learns block-pooled targets: use gate_loss");
    const GateForward f = gate_forward(gate, layer, head, q, k);
    const int64_t n = f.n, blocks = f.blocks;
    if (static_cast<int64_t>(target.size()) != n * blocks)
        throw Error("gate: the row target has " + std::to_string(target.size()) + " entries, expected n x blocks = " + std::to_string(n * blocks));
    // Row i weighs w_i = 1 - target_i(own block), its attention outside the block the gate always
    // keeps: the rows the gate has to choose for (an answer row looking far) count, the rows parked
    // on their own block hardly at all.
    std::vector<double> w(static_cast<size_t>(n));
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += (w[i] = std::max(1e-3, 1 - target[i * blocks + i / gate.block]));
    double loss = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < blocks; ++c) {
            const double t = target[i * blocks + c];
            if (t > 0) loss += w[i] / total * t * (std::log(t) - std::log(std::max(f.row_p[i * blocks + c], 1e-300)));
        }
    if (!grad) return loss;
    std::vector<double> dt(static_cast<size_t>(n * blocks));   // d loss / d t_iJ = w_i (p_iJ - target_iJ) / sum w
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < blocks; ++c) dt[i * blocks + c] = w[i] / total * (f.row_p[i * blocks + c] - target[i * blocks + c]) * scale;
    gate_backward(gate, f, dt, grad);
    return loss * scale;
}

GateTrainReport gate_train(BlockGate& gate, const AttentionSample& sample, const GateTrainOptions& options) {
    if (sample.inputs() < 1) throw Error("gate: no inputs to train on");
    const int64_t inputs = sample.inputs(), n = sample.q[0][0].shape.n, blocks = (n + gate.block - 1) / gate.block;
    if (gate.row_targets && gate.query != GateQuery::rows) throw Error("gate: row targets need a gate whose query side is rows");
    gate.causal = sample.causal;
    // Targets: the row-normalised, block-pooled dense attention of every input, layer and head
    // (row targets: each row's own share per key block, computed per head below).
    std::vector<PooledAttention> pooled;
    for (int64_t b = 0; b < (gate.row_targets ? 0 : inputs); ++b) {
        PooledAttention p = pooled_zeros(gate.layers, gate.heads, n, gate.block);
        for (int64_t l = 0; l < gate.layers; ++l) pooled_add_layer(p, l, sample.q[b][l], sample.k[b][l], sample.causal);
        pooled.push_back(std::move(p));
    }
    auto target = [&](int64_t b, int64_t l, int64_t h) {
        std::vector<double> t(static_cast<size_t>(blocks * blocks));
        for (int64_t r = 0; r < blocks; ++r) {
            double total = 0;
            for (int64_t c = 0; c < blocks; ++c)
                total += (t[r * blocks + c] = options.max_pooled ? pooled[b].max[pooled[b].index(l, h, r, c)] : pooled[b].row_share(l, h, r, c));
            for (int64_t c = 0; c < blocks; ++c) t[r * blocks + c] /= total;
        }
        return t;
    };
    GateTrainReport report;
    const int64_t heads_total = gate.layers * gate.heads, P = gate.per_head();
    std::vector<double> first(static_cast<size_t>(heads_total)), last(static_cast<size_t>(heads_total));
    parallel_for(heads_total, 0, [&](int64_t begin, int64_t end) {
        for (int64_t lh = begin; lh < end; ++lh) {
            const int64_t l = lh / gate.heads, h = lh % gate.heads;
            std::vector<std::vector<double>> targets;
            for (int64_t b = 0; b < inputs; ++b)
                targets.push_back(gate.row_targets ? row_block_shares(sample.q[b][l], sample.k[b][l], h, gate.block, sample.causal) : target(b, l, h));
            std::vector<double> m(static_cast<size_t>(P), 0.0), v(static_cast<size_t>(P), 0.0), grad(static_cast<size_t>(P));
            double* w = gate.at(l, h);
            for (int64_t step = 0; step < options.steps; ++step) {
                std::fill(grad.begin(), grad.end(), 0.0);
                double loss = 0;
                for (int64_t b = 0; b < inputs; ++b)
                    loss += (gate.row_targets ? gate_loss_rows : gate_loss)(gate, l, h, sample.q[b][l], sample.k[b][l], targets[b], grad.data(),
                                                                          1.0 / static_cast<double>(inputs));
                if (step == 0) first[lh] = loss;
                last[lh] = loss;
                const double c1 = 1 - std::pow(0.9, static_cast<double>(step + 1)), c2 = 1 - std::pow(0.999, static_cast<double>(step + 1));
                for (int64_t e = 0; e < P; ++e) {
                    m[e] = 0.9 * m[e] + 0.1 * grad[e];
                    v[e] = 0.999 * v[e] + 0.001 * grad[e] * grad[e];
                    w[e] -= options.lr * (m[e] / c1) / (std::sqrt(v[e] / c2) + 1e-8);
                }
            }
            if (options.progress)
                std::fprintf(stderr, "gate layer %lld head %lld: KL %.4f -> %.4f\n", static_cast<long long>(l), static_cast<long long>(h),
                             first[lh], last[lh]);
        }
    });
    for (int64_t lh = 0; lh < heads_total; ++lh) {
        report.first_loss += first[lh] / static_cast<double>(heads_total);
        report.last_loss += last[lh] / static_cast<double>(heads_total);
    }
    return report;
}

MaskSet gate_masks(const BlockGate& gate, int64_t layer, const Tensor& q, const Tensor& k, int64_t keep, double share) {
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t h = 0; h < gate.heads; ++h) {
        const std::vector<double> p = gate_predict(gate, layer, h, q, k);
        masks.push_back(std::make_shared<BlockMask>(share > 0 ? block_mask_top_share(q.shape.n, gate.block, p, share, true)
                                                              : block_mask_top_k(q.shape.n, gate.block, p, keep, true, gate.causal)));
    }
    return mask_set_make(1, gate.heads, std::move(masks));
}

void gate_save(const BlockGate& gate, const std::string& path) {
    const nlohmann::json j = {{"format", "sparsa.gate"}, {"version", 1},   {"layers", gate.layers}, {"heads", gate.heads},
                              {"head_dim", gate.head_dim}, {"hidden", gate.hidden}, {"block", gate.block},
                              {"query", gate_query_name(gate.query)}, {"key", gate_key_name(gate.key)},
                              {"targets", gate.row_targets ? "rows" : "blocks"}, {"causal", gate.causal}, {"params", gate.params}};
    const std::string text = j.dump();
    AtomicFile file(path);
    file.write(text.data(), text.size());
    file.commit();
}

BlockGate gate_load(const std::string& path) {
    const std::vector<uint8_t> bytes = InputFile(path).read_all();
    BlockGate g;
    try {
        const auto j = nlohmann::json::parse(bytes.begin(), bytes.end());
        if (j.at("format") != "sparsa.gate") throw Error("not a sparsa gate file");
        if (j.at("version").get<int64_t>() > 1) throw Error("gate version " + j.at("version").dump() + " is newer than this sparsa reads: update sparsa");
        g.layers = j.at("layers");
        g.heads = j.at("heads");
        g.head_dim = j.at("head_dim");
        g.hidden = j.at("hidden");
        g.block = j.at("block");
        g.query = gate_query_parse(j.value("query", std::string("block")));   // files before the choice: block, pooled
        g.key = gate_key_parse(j.value("key", std::string("pooled")));
        const std::string targets = j.value("targets", std::string("blocks"));
        if (targets != "rows" && targets != "blocks") throw Error("unknown targets '" + targets + "' (rows or blocks)");
        g.row_targets = targets == "rows";
        g.causal = j.value("causal", false);
        if (g.row_targets && g.query != GateQuery::rows) throw Error("a gate of row targets must have query side rows");
        g.params = j.at("params").get<std::vector<double>>();
    } catch (const nlohmann::json::exception& e) {
        throw Error(path + ": not a valid gate file (" + e.what() + "): write one with 'sparsa learn distill --method gate'");
    } catch (const Error& e) {
        throw Error(path + ": " + e.what());
    }
    if (g.layers < 1 || g.heads < 1 || g.head_dim < 1 || g.hidden < 1 || !block_size_valid(g.block) ||
        static_cast<int64_t>(g.params.size()) != g.layers * g.heads * g.per_head())
        throw Error(path + ": the gate's sizes and its " + std::to_string(g.params.size()) + " parameters disagree: the file is corrupt");
    return g;
}

// [SECTION] fixed baselines

std::string baseline_expression(const std::string& name, double density, int64_t n, int32_t block) {
    const int64_t B = block, blocks = (n + B - 1) / B;
    std::vector<std::string> ladder;   // increasing size
    if (name == "longformer") {
        for (int64_t g : {int64_t{0}, B})
            for (int64_t w = 0; w <= n; w += std::max<int64_t>(1, B / 2))
                ladder.push_back("longformer(w = " + std::to_string(w) + ", g = " + std::to_string(g) + ")");
    } else if (name == "bigbird") {
        for (int64_t g : {int64_t{0}, B})
            for (int64_t r = 0; r <= 1; ++r)
                for (int64_t x = 0; x <= blocks; ++x)
                    ladder.push_back("bigbird(r = " + std::to_string(r) + ", g = " + std::to_string(g) + ", blocks = " + std::to_string(x) + ")");
    } else {
        throw Error("unknown baseline '" + name + "' (use longformer or bigbird)");
    }
    std::string best = ladder.front();
    double best_density = -1;
    for (const std::string& e : ladder) {
        const auto mask = expression_compile(e, n, block);
        const double d = static_cast<double>(mask->kept_blocks()) / static_cast<double>(blocks * blocks);
        if (d <= density + 1e-12 && d > best_density) {
            best = e;
            best_density = d;
        }
    }
    return best;
}

} // namespace sparsa::learn
