// Receptive fields: one token by frontier expansion, all pairs by semi-naive boolean products
// over bitset rows (token or block resolution), the compiler's warning, the brute-force reference.
//
// Index
//   [SECTION] one token     Frontier: a set that grows hop by hop
//   [SECTION] all pairs     sparse rows, coverage_step, receptive_field_coverage, the warning
//   [SECTION] reference
#include "analysis/receptive_field.hpp"

#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <utility>

namespace sparsa {

namespace {

size_t to_size(int64_t i) { return static_cast<size_t>(i); }
int64_t words_for(int64_t bits) { return (bits + 63) / 64; }

} // namespace

const char* reach_direction_name(ReachDirection direction) { return direction == ReachDirection::in ? "in" : "out"; }
const char* reach_resolution_name(ReachResolution resolution) {
    return resolution == ReachResolution::token ? "token" : "block";
}
ReachResolution reach_resolution_auto(int64_t n) {
    return n <= kReachTokenMaxN ? ReachResolution::token : ReachResolution::block;
}

// [SECTION] one token

namespace {

// A set that grows hop by hop: S <- S | X S. When X is the graph of the previous hop, only the
// frontier (what that hop added) can add anything new: X S_prev is already in S.
struct Frontier {
    std::vector<uint64_t> set, added, next;
    const BlockMask* last = nullptr;
    int64_t size = 1;

    Frontier(int64_t n, int64_t token) : set(to_size(words_for(n))), added(set.size()), next(set.size()) {
        bits_set(set.data(), token);
        added = set;
    }
    void hop(const BlockMask& x) {
        if (size == x.n) return;  // full: nothing more to see
        next = set;
        bits_expand(x, (&x == last ? added : set).data(), next.data(), static_cast<int64_t>(set.size()));
        for (size_t w = 0; w < set.size(); ++w) added[w] = next[w] & ~set[w];
        set.swap(next);
        size = bits_count(set);
        last = &x;
    }
};

} // namespace

TokenReach receptive_field_token(const ReachGraph& graph, int64_t token, ReachDirection direction, bool keep_sets) {
    const int64_t n = graph.n, layers = static_cast<int64_t>(graph.layers.size());
    if (token < 0 || token >= n) {
        throw Error("receptive field: token " + std::to_string(token) + " is outside the sequence of n = " +
                    std::to_string(n) + " (use 0 to " + std::to_string(n - 1) + ")");
    }
    if (direction == ReachDirection::out && static_cast<int64_t>(graph.transposed.size()) != layers) {
        throw Error("receptive_field_token: direction out needs the transposed graphs (reach_graph_make(set, true))");
    }
    TokenReach r;
    r.token = token;
    r.direction = direction;
    r.sizes.push_back(1);
    if (n == 1) r.layers_to_all = 0;
    Frontier f(n, token);
    if (keep_sets) r.sets.push_back(f.set);
    auto record = [&](const Frontier& g, int64_t l) {
        r.sizes.push_back(g.size);
        if (r.layers_to_all < 0 && g.size == n) r.layers_to_all = l;
        if (keep_sets) r.sets.push_back(g.set);
    };
    bool all_same = true;
    for (const auto& layer : graph.layers) all_same = all_same && layer == graph.layers[0];
    if (direction == ReachDirection::out || all_same) {
        // Column k of R_l = M_l (column k of R_{l-1}), one hop per layer over A_l^T; or row q of
        // R_l = row q of M^l when every layer is the same M.
        for (int64_t l = 1; l <= layers; ++l) {
            f.hop(direction == ReachDirection::out ? *graph.transposed[to_size(l - 1)] : *graph.layers[to_size(l - 1)]);
            record(f, l);
        }
        return r;
    }
    // Row q of R_l = e_q M_l M_{l-1} ... M_1: hops over layers l, l-1, ..., 1, a fresh chain per l.
    for (int64_t l = 1; l <= layers; ++l) {
        Frontier chain(n, token);
        for (int64_t m = l; m >= 1 && chain.size < n; --m) chain.hop(*graph.layers[to_size(m - 1)]);
        record(chain, l);
    }
    return r;
}

// [SECTION] all pairs

namespace {

// Word `index` of a bitset row, with some of its bits.
struct Word {
    int64_t index;
    uint64_t bits;
};

// Sparse bitset rows: row r is items[start[r] .. start[r + 1]), distinct word indices.
struct SparseRows {
    std::vector<int64_t> start;  // [rows + 1]
    std::vector<Word> items;
};

// What one chunk of rows produced, before the chunks are joined in order.
struct ChunkRows {
    std::vector<int64_t> counts;  // items per row
    std::vector<Word> items;
};

SparseRows sparse_rows_join(std::vector<ChunkRows>& chunks) {
    SparseRows out;
    out.start.assign(1, 0);
    size_t total = 0;
    for (const auto& c : chunks) total += c.items.size();
    out.items.reserve(total);
    for (auto& c : chunks) {
        for (int64_t count : c.counts) out.start.push_back(out.start.back() + count);
        out.items.insert(out.items.end(), c.items.begin(), c.items.end());
        c = ChunkRows{};
    }
    return out;
}

// Every nonzero word of dense rows [rows, words].
SparseRows sparse_rows_from_dense(const std::vector<uint64_t>& rows, int64_t count, int64_t words) {
    SparseRows out;
    out.start.assign(1, 0);
    for (int64_t r = 0; r < count; ++r) {
        for (int64_t w = 0; w < words; ++w) {
            if (rows[to_size(r * words + w)] != 0) out.items.push_back({w, rows[to_size(r * words + w)]});
        }
        out.start.push_back(static_cast<int64_t>(out.items.size()));
    }
    return out;
}

// Per-thread scratch for OR-ing sparse rows together.
struct Scratch {
    std::vector<uint64_t> acc;   // [words] a dense accumulator, zero between uses
    std::vector<int64_t> pos;    // [words] where word w sits in the current output row, or -1
    std::vector<int64_t> touched;
    explicit Scratch(int64_t words) : acc(to_size(words), 0), pos(to_size(words), -1) {}

    void add(const Word* begin, const Word* end) {
        for (const Word* it = begin; it != end; ++it) {
            if (acc[to_size(it->index)] == 0) touched.push_back(it->index);
            acc[to_size(it->index)] |= it->bits;
        }
    }
    // Appends the accumulated words to `out`, and clears the accumulator.
    void take(std::vector<Word>& out) {
        for (int64_t w : touched) {
            out.push_back({w, acc[to_size(w)]});
            acc[to_size(w)] = 0;
        }
        touched.clear();
    }
};

// The rows run in chunks of query blocks on `threads` threads; body(qb_begin, qb_end, scratch,
// out) appends rows qb_begin * B .. in order.
template <class Body>
SparseRows rows_parallel(int64_t blocks, int64_t words, int threads, Body body) {
    const int workers = threads > 0 ? threads : thread_count();
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{workers} * 8));
    std::vector<ChunkRows> out(to_size(chunks));
    parallel_for(chunks, workers, [&](int64_t c0, int64_t c1) {
        Scratch scratch(words);
        for (int64_t c = c0; c < c1; ++c) body(blocks * c / chunks, blocks * (c + 1) / chunks, scratch, out[to_size(c)]);
    });
    return sparse_rows_join(out);
}

struct CoverageState {
    int64_t nodes = 0, words = 0;
    std::vector<uint64_t> rows;        // [nodes, words] R_l
    std::vector<int64_t> row_count;    // [nodes] bits set per row
    std::vector<int64_t> row_target;   // [nodes] bits a complete row has (nodes, or a + 1 causal)
};

// One layer: rows[q] |= OR over j in graph[q] of from[j], for every q (rows[q] already holds
// from[q], the residual). Returns what each row gained. `from` is R_{l-1} itself (layer
// differs from the previous one) or what the previous layer added (same graph: semi-naive).
SparseRows coverage_step(const BlockMask& graph, const SparseRows& from, CoverageState& st, int threads) {
    const int64_t block = graph.block, blocks = graph.q_blocks(), words = st.words;
    // Full blocks pass on everything their key block holds: the union of from[j], j in block kb.
    std::vector<uint8_t> needed(to_size(blocks), 0);
    for (size_t e = 0; e < graph.col_idx.size(); ++e) {
        if (graph.partial_idx[e] < 0) needed[to_size(graph.col_idx[e])] = 1;
    }
    std::vector<Word> list;
    SparseRows block_union = rows_parallel(blocks, words, threads, [&](int64_t b0, int64_t b1, Scratch& s, ChunkRows& out) {
        for (int64_t kb = b0; kb < b1; ++kb) {
            if (needed[to_size(kb)]) {
                for (int64_t j = kb * block; j < std::min(st.nodes, kb * block + block); ++j) {
                    s.add(from.items.data() + from.start[to_size(j)], from.items.data() + from.start[to_size(j) + 1]);
                }
            }
            const size_t before = out.items.size();
            s.take(out.items);
            out.counts.push_back(static_cast<int64_t>(out.items.size() - before));
        }
    });
    return rows_parallel(blocks, words, threads, [&](int64_t b0, int64_t b1, Scratch& s, ChunkRows& out) {
        std::vector<Word> full;  // what the full blocks of the row pass on
        for (int64_t qb = b0; qb < b1; ++qb) {
            for (int64_t e = graph.row_ptr[to_size(qb)]; e < graph.row_ptr[to_size(qb) + 1]; ++e) {
                if (graph.partial_idx[to_size(e)] >= 0) continue;
                const int64_t kb = graph.col_idx[to_size(e)];
                s.add(block_union.items.data() + block_union.start[to_size(kb)],
                      block_union.items.data() + block_union.start[to_size(kb) + 1]);
            }
            full.clear();
            s.take(full);
            for (int64_t q = qb * block; q < std::min(st.nodes, qb * block + block); ++q) {
                const size_t row_begin = out.items.size();
                if (st.row_count[to_size(q)] < st.row_target[to_size(q)]) {
                    uint64_t* row = st.rows.data() + q * words;
                    int64_t gained = 0;
                    auto gain = [&](const Word* begin, const Word* end) {
                        for (const Word* it = begin; it != end; ++it) {
                            const uint64_t fresh = it->bits & ~row[it->index];
                            if (fresh == 0) continue;
                            row[it->index] |= fresh;
                            gained += std::popcount(fresh);
                            int64_t& at = s.pos[to_size(it->index)];
                            if (at < 0) {
                                at = static_cast<int64_t>(out.items.size());
                                out.items.push_back({it->index, fresh});
                            } else {
                                out.items[to_size(at)].bits |= fresh;
                            }
                        }
                    };
                    gain(full.data(), full.data() + full.size());
                    const int64_t i = q - qb * block;
                    for (int64_t e = graph.row_ptr[to_size(qb)]; e < graph.row_ptr[to_size(qb) + 1]; ++e) {
                        const int32_t p = graph.partial_idx[to_size(e)];
                        if (p < 0) continue;
                        const int64_t k0 = int64_t{graph.col_idx[to_size(e)]} * block;
                        const uint64_t* bits = graph.partial_bits(p);
                        for (int64_t t = 0; t < (block >= 64 ? block / 64 : 1); ++t) {
                            uint64_t w = block >= 64 ? bits[i * (block / 64) + t] : bitmask_row_bits(bits, block, i);
                            for (; w != 0; w &= w - 1) {
                                const int64_t j = k0 + t * 64 + std::countr_zero(w);
                                gain(from.items.data() + from.start[to_size(j)], from.items.data() + from.start[to_size(j) + 1]);
                            }
                        }
                    }
                    for (size_t it = row_begin; it < out.items.size(); ++it) s.pos[to_size(out.items[it].index)] = -1;
                    st.row_count[to_size(q)] += gained;
                }
                out.counts.push_back(static_cast<int64_t>(out.items.size() - row_begin));
            }
        }
    });
}

std::string percent_text(double fraction) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, fraction < 0.001 ? "%.4f%%" : "%.1f%%", 100 * fraction);
    return buffer;
}

} // namespace

double ReachCoverage::fraction(int64_t layer) const {
    if (connected.empty() || target_pairs == 0) return 0.0;
    const size_t at = to_size(std::min<int64_t>(layer, static_cast<int64_t>(connected.size()) - 1));
    return static_cast<double>(connected[at]) / static_cast<double>(target_pairs);
}

ReachCoverage receptive_field_coverage(const MaskSet& set, const ReachOptions& options) {
    if (set.n > (int64_t{1} << 31)) {
        throw Error("receptive field: n = " + std::to_string(set.n) + " is beyond the 2^31 tokens whose pairs fit the counts");
    }
    ReachCoverage cov;
    cov.resolution = options.resolution;
    cov.n = set.n;
    cov.layers = set.layers;
    cov.causal = true;
    for (const auto& m : set.unique_masks()) cov.causal = cov.causal && block_mask_causal(*m);
    cov.target_pairs = cov.causal ? set.n * (set.n + 1) / 2 : set.n * set.n;

    // The graphs over nodes, one per layer; equal layers share one (a pointer compare).
    std::vector<std::shared_ptr<const BlockMask>> graphs;
    if (options.resolution == ReachResolution::token) {
        graphs = reach_graph_make(set, false).layers;
    } else {
        // Straight from the heads' kept blocks: the token-level union is never built.
        const int64_t blocks = (set.n + set.block - 1) / set.block, max_nodes = std::max<int64_t>(1, options.max_nodes);
        int64_t group = 1;
        while ((blocks + group - 1) / group > max_nodes) group *= 2;
        cov.node_tokens = group * set.block;
        const auto layer_heads = mask_set_layer_heads(set);
        std::vector<std::pair<std::vector<const BlockMask*>, std::shared_ptr<const BlockMask>>> made;
        for (const auto& heads : layer_heads) {
            size_t i = 0;
            while (i < made.size() && made[i].first != heads) ++i;
            if (i == made.size()) {
                auto g = std::make_shared<const BlockMask>(block_graph_make(heads, group));
                for (const auto& m : made) {
                    if (*m.second == *g) g = m.second;
                }
                made.emplace_back(heads, g);
            }
            graphs.push_back(made[i].second);
        }
    }
    const int64_t nodes = graphs[0]->n, last_size = set.n - (nodes - 1) * cov.node_tokens;
    cov.nodes = nodes;
    auto node_size = [&](int64_t a) { return a == nodes - 1 ? last_size : cov.node_tokens; };
    // Token pairs of connected node pairs (a, b) over the bits of one word of row a.
    auto pair_weight = [&](int64_t a, int64_t w, uint64_t bits) {
        if (cov.node_tokens == 1) return int64_t{std::popcount(bits)};
        int64_t cols = std::popcount(bits) * cov.node_tokens;
        if (w == (nodes - 1) / 64 && bits_test(&bits, (nodes - 1) % 64)) cols -= cov.node_tokens - last_size;
        return node_size(a) * cols;  // never the diagonal: R_0 holds it from the start
    };

    CoverageState st;
    st.nodes = nodes;
    st.words = words_for(nodes);
    st.rows.assign(to_size(nodes * st.words), 0);
    st.row_count.assign(to_size(nodes), 1);
    st.row_target.resize(to_size(nodes));
    SparseRows added;  // what the last layer added to each row
    int64_t connected = 0;
    for (int64_t a = 0; a < nodes; ++a) {
        bits_set(st.rows.data() + a * st.words, a);
        st.row_target[to_size(a)] = cov.causal ? a + 1 : nodes;
        const int64_t s = node_size(a);
        connected += cov.causal ? s * (s + 1) / 2 : s * s;
    }
    cov.connected.push_back(connected);
    const BlockMask* previous = nullptr;
    for (int64_t l = 1;; ++l) {
        if (connected == cov.target_pairs) {  // complete: later layers change nothing
            if (cov.layers_needed < 0) cov.layers_needed = l - 1;
            if (l > cov.layers) break;
            cov.connected.push_back(connected);
            if (options.on_layer && cov.node_tokens == 1) options.on_layer(l, st.rows, st.words);
            continue;
        }
        const BlockMask& g = *graphs[to_size(std::min(l, cov.layers) - 1)];
        SparseRows from = &g == previous ? std::move(added) : sparse_rows_from_dense(st.rows, nodes, st.words);
        added = coverage_step(g, from, st, options.threads);
        previous = &g;
        int64_t gained = 0;
        for (int64_t a = 0; a < nodes; ++a) {
            for (int64_t i = added.start[to_size(a)]; i < added.start[to_size(a) + 1]; ++i) {
                gained += pair_weight(a, added.items[to_size(i)].index, added.items[to_size(i)].bits);
            }
        }
        connected += gained;
        if (l > cov.layers && gained == 0) break;  // the last layer, repeated, adds nothing more
        cov.connected.push_back(connected);
        if (options.on_layer && cov.node_tokens == 1 && l <= cov.layers) options.on_layer(l, st.rows, st.words);
        if (l >= cov.layers && gained == 0) break;
        if (options.max_layers > 0 && l >= std::max(options.max_layers, cov.layers) && connected < cov.target_pairs) {
            cov.stopped = true;  // still connecting: the layers needed are more than l
            break;
        }
    }
    if (connected == cov.target_pairs && cov.layers_needed < 0) cov.layers_needed = static_cast<int64_t>(cov.connected.size()) - 1;
    cov.out_of_reach = cov.target_pairs - cov.connected[to_size(cov.layers)];
    cov.saturation_layers = static_cast<int64_t>(cov.connected.size()) - 1;
    while (cov.saturation_layers > 0 && cov.connected[to_size(cov.saturation_layers - 1)] == connected) --cov.saturation_layers;
    if (cov.layers_needed >= 0 || cov.stopped) return cov;

    // Never: the queries that attend nobody else, the keys nobody else attends, and a pair that
    // no chain links although its query attends others and its key is attended.
    cov.never_pairs = cov.target_pairs - connected;
    std::vector<uint8_t> attended(to_size(nodes), 0), attends(to_size(nodes), 0);  // by / to another node
    for (const auto& g : graphs) {
        const int64_t block = g->block;
        for (int64_t qb = 0; qb < g->q_blocks(); ++qb) {
            const int64_t a0 = qb * block, a1 = std::min(nodes, a0 + block);
            for (int64_t e = g->row_ptr[to_size(qb)]; e < g->row_ptr[to_size(qb) + 1]; ++e) {
                const int64_t b0 = int64_t{g->col_idx[to_size(e)]} * block, b1 = std::min(nodes, b0 + block);
                const int32_t p = g->partial_idx[to_size(e)];
                if (p < 0) {  // every a attends every b of the block: someone else, unless both are one node
                    for (int64_t a = a0; a < a1; ++a) attends[to_size(a)] |= b1 - b0 > 1 || b0 != a;
                    for (int64_t b = b0; b < b1; ++b) attended[to_size(b)] |= a1 - a0 > 1 || a0 != b;
                    continue;
                }
                const uint64_t* bits = g->partial_bits(p);
                for (int64_t t = 0; t < block * block / 64; ++t) {
                    for (uint64_t w = bits[t]; w != 0; w &= w - 1) {
                        const int64_t bit = t * 64 + std::countr_zero(w), a = a0 + bit / block, b = b0 + bit % block;
                        if (a != b) attends[to_size(a)] = attended[to_size(b)] = 1;
                    }
                }
            }
        }
    }
    auto node_text = [&](const char* what, int64_t a) {
        if (cov.node_tokens == 1) return std::string(what) + " " + std::to_string(a);
        return std::string(what) + "s " + std::to_string(a * cov.node_tokens) + ".." +
               std::to_string(a * cov.node_tokens + node_size(a) - 1);
    };
    // Only nodes that some target pair links to another node count (a causal query 0 sees only itself).
    int64_t unattended = 0, blind = 0, first_unattended = -1, first_blind = -1, q = -1, k = -1;
    for (int64_t a = 0; a < nodes; ++a) {
        if (!attended[to_size(a)] && (cov.causal ? a < nodes - 1 : nodes > 1) && unattended++ == 0) first_unattended = a;
        if (!attends[to_size(a)] && (cov.causal ? a > 0 : nodes > 1) && blind++ == 0) first_blind = a;
        if (q >= 0 || !attends[to_size(a)] || st.row_count[to_size(a)] == st.row_target[to_size(a)]) continue;
        for (int64_t b = 0; b < st.row_target[to_size(a)] && q < 0; ++b) {
            if (attended[to_size(b)] && !bits_test(st.rows.data() + a * st.words, b)) {
                q = a;
                k = b;
            }
        }
    }
    std::vector<std::string> parts;
    if (q >= 0) parts.push_back(node_text("query", q) + " never sees " + node_text("key", k) + ": no chain of allowed pairs links them, at any depth");
    if (blind > 0) {
        parts.push_back(std::to_string(blind) + (blind == 1 ? " query attends no key but itself" : " queries attend no key but themselves") +
                        " in any layer (e.g. " + node_text("query", first_blind) + ")");
    }
    if (unattended > 0) {
        parts.push_back(std::to_string(unattended) + (unattended == 1 ? " key is" : " keys are") +
                        " attended by no other query in any layer (e.g. " + node_text("key", first_unattended) + ")");
    }
    for (const auto& part : parts) cov.never_reason += (cov.never_reason.empty() ? "" : "; ") + part;
    return cov;
}

ReachWarning receptive_field_unreached(const MaskSet& set, int threads) {
    ReachOptions options;
    options.resolution = reach_resolution_auto(set.n);
    options.threads = threads;
    options.max_layers = set.layers + std::max<int64_t>(set.layers, 512);  // a warning stays quick
    ReachWarning w;
    w.coverage = receptive_field_coverage(set, options);
    const ReachCoverage& c = w.coverage;
    const int64_t at_layers = c.connected[to_size(c.layers)], any_depth = c.connected.back();
    w.warn = at_layers < any_depth;  // more layers would connect more
    if (!w.warn) return w;
    const bool block = c.resolution == ReachResolution::block;
    auto share = [&](int64_t pairs) { return percent_text(static_cast<double>(pairs) / static_cast<double>(c.target_pairs)); };
    const std::string links = "long-range links (global tokens such as global(first(64)), random blocks)";
    w.message = "some query cannot reach some key within " + std::to_string(c.layers) + " layer" + (c.layers == 1 ? "" : "s") +
                ": " + share(c.out_of_reach) + " of " + (c.causal ? "the pairs with k <= q" : "pairs") + " are still out of reach (";
    if (c.stopped) {
        w.message += "more than " + std::to_string(c.connected.size() - 1) + " layers would be needed";
        w.hint = "add " + links + " so that few layers connect every pair; `sparsa reach` counts the layers";
    } else if (c.layers_needed >= 0) {
        w.message += "it would need " + std::string(block ? "at least " : "") + std::to_string(c.layers_needed) + " layers";
        w.hint = "raise `layers` to " + std::to_string(c.layers_needed) + ", or add " + links + " so fewer layers connect every pair";
    } else {
        w.message += share(any_depth - at_layers) + " for lack of layers: " + std::to_string(c.saturation_layers) +
                     " layers would connect those; the other " + share(c.never_pairs) + " never connect: " + c.never_reason;
        w.hint = "raise `layers` to " + std::to_string(c.saturation_layers) + ", or add " + links +
                 "; the pairs that never connect need links between the parts (ignore them if the parts must stay apart, "
                 "as separate documents)";
    }
    w.message += std::string("; ") + (block ? "block resolution, nodes of " + std::to_string(c.node_tokens) + " tokens" : "token resolution") + ")";
    return w;
}

// [SECTION] reference

std::vector<std::vector<uint8_t>> receptive_field_reference(const MaskSet& set, int64_t layers) {
    const int64_t n = set.n;
    std::vector<std::vector<uint8_t>> out;
    std::vector<uint8_t> r(to_size(n * n), 0), m(to_size(n * n)), row(to_size(n));
    for (int64_t q = 0; q < n; ++q) r[to_size(q * n + q)] = 1;
    out.push_back(r);
    for (int64_t l = 1; l <= layers; ++l) {
        // M = I | (OR over heads of the layer's masks); the last layer repeats.
        const int64_t layer = std::min(l, set.layers) - 1;
        std::fill(m.begin(), m.end(), uint8_t{0});
        for (int64_t q = 0; q < n; ++q) m[to_size(q * n + q)] = 1;
        for (int64_t h = 0; h < set.heads; ++h) {
            for (int64_t q = 0; q < n; ++q) {
                block_mask_dense_row(set.at(layer, h), q, row.data());
                for (int64_t k = 0; k < n; ++k) m[to_size(q * n + k)] |= row[to_size(k)];
            }
        }
        // R_l[q][k] = OR_j M[q][j] & R_{l-1}[j][k]
        std::vector<uint8_t> next(to_size(n * n), 0);
        for (int64_t q = 0; q < n; ++q) {
            for (int64_t j = 0; j < n; ++j) {
                if (!m[to_size(q * n + j)]) continue;
                for (int64_t k = 0; k < n; ++k) next[to_size(q * n + k)] |= r[to_size(j * n + k)];
            }
        }
        r.swap(next);
        out.push_back(r);
    }
    return out;
}

} // namespace sparsa
