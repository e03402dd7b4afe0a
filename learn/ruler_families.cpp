// The other families of the RULER evaluation's chart: see ruler_families.hpp.
//
// Index: [SECTION] methods, [SECTION] fixed patterns and the search script, [SECTION] content families
#include "learn/ruler_families.hpp"

#include "engine/content/buckets.hpp"
#include "engine/content/favor.hpp"
#include "engine/content/layer_attention.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"
#include "learn/causal_mask.hpp"
#include "learn/eval.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

namespace sparsa::learn {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double median_of(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

double block_denominator(int64_t n, int32_t block, bool causal) {
    const int64_t blocks = (n + block - 1) / block;
    return causal ? static_cast<double>(causal_block_count(n, block)) : static_cast<double>(blocks * blocks);
}

} // namespace

// [SECTION] methods

std::pair<MaskSet, double> ruler_fixed_set(const std::shared_ptr<const BlockMask>& mask, int64_t heads, bool causal) {
    MaskSet set = mask_set_make(1, heads, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(heads), mask));
    if (causal) set = mask_set_restrict_causal(set);
    return {set, static_cast<double>(set.at(0, 0).kept_blocks()) / block_denominator(mask->n, mask->block, causal)};
}

double ruler_relative_error(const Tensor& a, const Tensor& b) {
    if (a.shape.size() != b.shape.size()) throw Error("ruler eval: output error of tensors of different sizes");
    double diff = 0, norm = 0;
    for (size_t i = 0; i < a.data.size(); ++i) {
        const double x = a.data[i], y = b.data[i];
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    return norm > 0 ? std::sqrt(diff / norm) : (diff > 0 ? 1.0 : 0.0);
}

// [SECTION] fixed patterns and the search script

std::vector<RulerMethod> ruler_fixed_families(int64_t n, int32_t block, int64_t heads, double target, bool causal) {
    const int64_t B = block, blocks = (n + B - 1) / B;
    std::vector<std::pair<std::string, std::vector<std::string>>> ladders;   // (family, increasing sizes)
    {
        std::vector<std::string> window, longformer, bigbird;
        for (int64_t r = 0; r < blocks; ++r) window.push_back("band(" + std::to_string(r) + ")");
        for (int64_t w = 0; w <= n; w += std::max<int64_t>(1, B / 2))
            longformer.push_back("longformer(w = " + std::to_string(w) + ", g = " + std::to_string(B) + ")");
        for (int64_t g : {int64_t{0}, B})
            for (int64_t r = 0; r <= 1; ++r)
                for (int64_t x = 1; x <= blocks; ++x)
                    bigbird.push_back("bigbird(r = " + std::to_string(r) + ", g = " + std::to_string(g) + ", blocks = " + std::to_string(x) + ")");
        ladders = {{"window", window}, {"longformer", longformer}, {"bigbird", bigbird}};
    }
    std::vector<RulerMethod> out;
    for (const auto& [family, ladder] : ladders) {
        std::string best, smallest;
        MaskSet best_set, smallest_set;
        double best_density = -1, smallest_density = INFINITY;
        for (const std::string& e : ladder) {
            auto [set, d] = ruler_fixed_set(expression_compile(e, n, block), heads, causal);
            if (d <= target + 1e-9 && d > best_density) {
                best = e, best_set = set, best_density = d;
            }
            if (d < smallest_density) smallest = e, smallest_set = std::move(set), smallest_density = d;
        }
        const bool fits = best_density >= 0;
        const std::string detail = (fits ? best : smallest) + (causal ? " & causal" : "") +
                                   (fits ? ": the largest of its family within the density" : ": the smallest of its family (none fits the density)");
        out.push_back({family, target, [set = fits ? best_set : smallest_set](int64_t, const Tensor&, const Tensor&) { return set; }, detail});
    }
    return out;
}

RulerMethod ruler_search_script(const SearchTable& table, double target, bool causal) {
    // The table's densities after the causal cut, so search_by_density chooses within the causal budget.
    SearchTable t = table;
    for (SearchCandidate& c : t.candidates) c.density = ruler_fixed_set(c.mask, 1, causal).second;
    const SearchResult r = search_by_density(t, target);
    std::vector<MaskSet> layers;
    std::string detail = "per head:";
    for (int64_t l = 0; l < t.layers; ++l) {
        std::vector<std::shared_ptr<const BlockMask>> heads;
        for (int64_t h = 0; h < t.heads; ++h) {
            const int64_t c = r.choice[static_cast<size_t>(l * t.heads + h)];
            heads.push_back(t.candidates[static_cast<size_t>(c)].mask);
            char b[160];
            std::snprintf(b, sizeof b, "%s L%lldH%lld %s (training recall %.3f)", l + h ? ";" : "", static_cast<long long>(l),
                          static_cast<long long>(h), t.candidates[static_cast<size_t>(c)].expression.c_str(), t.at(c, l, h));
            detail += b;
        }
        MaskSet set = mask_set_make(1, t.heads, heads);
        layers.push_back(causal ? mask_set_restrict_causal(set) : set);
    }
    return {"search script", target, [layers](int64_t l, const Tensor&, const Tensor&) { return layers[static_cast<size_t>(l)]; }, detail};
}

// [SECTION] content families

namespace {

// One candidate of a content family: a MaskSet of every layer whose heads carry the spec (the
// fixed part empty), and the arrays its specs name (anchors).
struct ContentCandidate {
    std::string expression;   // as a script writes it
    std::shared_ptr<const MaskSet> set;
    std::shared_ptr<const ContentArrays> arrays;
};

ContentCandidate content_candidate(int64_t n, int32_t block, int64_t layers, int64_t heads, const ContentSpec& spec,
                                   std::shared_ptr<const ContentArrays> arrays, const std::string& expression) {
    std::vector<std::shared_ptr<const BlockMask>> empty(static_cast<size_t>(layers * heads),
                                                        std::make_shared<BlockMask>(block_mask_empty(n, block)));
    auto set = std::make_shared<MaskSet>(mask_set_make(layers, heads, empty));
    for (int64_t l = 0; l < layers; ++l)
        for (int64_t h = 0; h < heads; ++h) {
            auto s = std::make_shared<ContentSpec>(spec);
            if (spec.kind == ContentKind::anchors) s->file = "anchors L" + std::to_string(l) + "H" + std::to_string(h) + " k" + std::to_string(spec.buckets);
            set->content.push_back(s);
        }
    return {expression, set, std::move(arrays)};
}

// The token-level masks the content engine's allowed set gives on this input (its exact softmax
// over A is the block-sparse engine's over these masks).
MaskChooser content_chooser(const ContentCandidate& c) {
    return [c](int64_t layer, const Tensor& q, const Tensor& k) {
        LayerOptions lo;
        lo.threads = 1;
        lo.arrays = c.arrays.get();
        const int64_t n = q.shape.n;
        std::vector<std::shared_ptr<const BlockMask>> heads;
        for (int64_t h = 0; h < q.shape.heads; ++h) {
            const std::vector<uint8_t> allowed = layer_allowed_dense(q, k, *c.set, layer, 0, h, lo);
            heads.push_back(std::make_shared<BlockMask>(block_mask_from_dense(n, c.set->block, allowed.data())));
        }
        return mask_set_make(1, q.shape.heads, heads);
    };
}

// Pairs the content engine allows on these inputs (every layer and head) over the causal (or
// dense) pairs.
double content_density(const ContentCandidate& c, const TeacherCapture& capture, bool causal, int threads) {
    const int64_t n = c.set->n;
    const double all = causal ? static_cast<double>(n * (n + 1) / 2) : static_cast<double>(n * n);
    std::vector<double> per(capture.q.size(), 0.0);
    parallel_for(static_cast<int64_t>(capture.q.size()), threads, [&](int64_t begin, int64_t end) {
        LayerOptions lo;
        lo.threads = 1;
        lo.arrays = c.arrays.get();
        for (int64_t b = begin; b < end; ++b)
            for (size_t l = 0; l < capture.q[b].size(); ++l)
                for (const LayerHeadReport& r : layer_report(capture.q[b][l], capture.k[b][l], *c.set, static_cast<int64_t>(l), lo))
                    per[b] += static_cast<double>(r.pairs.pairs) / all;
    });
    double sum = 0;
    for (double x : per) sum += x;
    const int64_t L = static_cast<int64_t>(capture.q[0].size()), H = capture.q[0][0].shape.heads;
    return sum / static_cast<double>(capture.q.size() * L * H);
}

// Times the content engine on one layer: hashing or assignment as select, the rest of the call
// (sort, gather, passes, merge) as forward.
std::pair<double, double> content_time(const ContentCandidate& c, const Tensor& q, const Tensor& k, const Tensor& v, int repeats) {
    LayerOptions lo;
    lo.threads = 1;
    lo.arrays = c.arrays.get();
    std::vector<double> select, forward;
    for (int rep = 0; rep < std::max(1, repeats); ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        const LayerForward f = layer_attention_forward(q, k, v, *c.set, 0, lo);
        const double total = ms_since(t0), hashing = 1000 * f.times.content.hashing;
        select.push_back(hashing);
        forward.push_back(total - hashing);
    }
    return {median_of(select), median_of(forward)};
}

} // namespace

std::vector<RulerMethod> ruler_content_families(const ContentFamilyInputs& in, const std::vector<double>& targets,
                                                const ContentFamilyOptions& o, std::vector<std::string>& notes) {
    const Teacher& teacher = *in.teacher;
    const int64_t n = teacher.task.n, L = teacher.config.layers, H = teacher.config.heads, hd = teacher.config.head_dim();
    const bool causal = teacher.config.causal;
    const TeacherCapture validation = teacher_capture(teacher, *in.validation, o.block, o.threads);
    const std::vector<int64_t> chunks = {8, 16, 32, 64, 128};

    // Anchors: k = n / chunk per (layer, head), fitted on the training stream's q and k rows.
    auto arrays = std::make_shared<ContentArrays>();
    {
        const auto t0 = std::chrono::steady_clock::now();
        const TaskBatch train = task_batch(teacher.task, task_stream_seed(TaskStream::train, o.train_seed), kCalibrationFirst, o.fit_inputs);
        const TeacherCapture fit = teacher_capture(teacher, train, o.block, o.threads);
        for (int64_t l = 0; l < L; ++l)
            for (int64_t h = 0; h < H; ++h) {
                std::vector<float> rows;   // [2 fit_inputs n, hd]: the head's queries, then its keys
                for (const auto* side : {&fit.q, &fit.k})
                    for (const std::vector<Tensor>& layers_of : *side) {
                        const Tensor& x = layers_of[static_cast<size_t>(l)];
                        rows.insert(rows.end(), x.row(0, h, 0), x.row(0, h, 0) + n * hd);
                    }
                for (int64_t chunk : chunks) {
                    const int64_t k = std::max<int64_t>(1, n / chunk);
                    ContentArray a;
                    a.path = "anchors L" + std::to_string(l) + "H" + std::to_string(h) + " k" + std::to_string(k);
                    a.shape = {1, k, hd};
                    a.values = anchors_fit(rows.data(), static_cast<int64_t>(rows.size()) / hd, hd, k, o.train_seed, o.iterations, o.threads);
                    (*arrays)[a.path] = std::move(a);
                }
            }
        char line[256];
        std::snprintf(line, sizeof line,
                      "anchors: k = n / chunk per layer and head, fitted (spherical k-means, %lld iterations) on the q and k rows of %lld "
                      "training-stream sequences (seed %llu, from index 2^40) in %.1f s",
                      static_cast<long long>(o.iterations), static_cast<long long>(o.fit_inputs),
                      static_cast<unsigned long long>(o.train_seed), ms_since(t0) / 1000);
        notes.push_back(line);
    }
    // The grids: LSH with about one chunk per bucket (n / chunk buckets, Reformer's sizing) and
    // 1, 2 or 4 rounds; anchors with one round.
    std::vector<std::pair<std::string, std::vector<ContentCandidate>>> grids(2);
    grids[0].first = "lsh";
    grids[1].first = "anchors";
    for (int64_t chunk : chunks)
        for (int64_t rounds : {1, 2, 4}) {
            ContentSpec s;
            s.kind = ContentKind::lsh;
            s.buckets = std::max<int64_t>(2, n / chunk / 2 * 2);
            s.rounds = rounds;
            s.chunk = chunk;
            s.shared_qk = false;
            s.causal = causal;
            char e[128];
            std::snprintf(e, sizeof e, "lsh(%lld, %lld, %lld, shared_qk = false)", static_cast<long long>(s.buckets),
                          static_cast<long long>(rounds), static_cast<long long>(chunk));
            grids[0].second.push_back(content_candidate(n, o.block, L, H, s, nullptr, e));
        }
    for (int64_t chunk : chunks) {
        ContentSpec s;
        s.kind = ContentKind::anchors;
        s.buckets = std::max<int64_t>(1, n / chunk);
        s.rounds = 1;
        s.chunk = chunk;
        s.shared_qk = false;
        s.causal = causal;
        char e[128];
        std::snprintf(e, sizeof e, "anchors(%lld, 1, %lld, shared_qk = false)", static_cast<long long>(s.buckets), static_cast<long long>(chunk));
        grids[1].second.push_back(content_candidate(n, o.block, L, H, s, arrays, e));
    }
    std::vector<RulerMethod> out;
    for (auto& [family, grid] : grids) {
        std::vector<double> density;
        for (const ContentCandidate& c : grid) density.push_back(content_density(c, validation, causal, o.threads));
        std::vector<double> accuracy(grid.size(), -1.0);   // measured once, for the candidates some target lets in
        for (double target : targets) {
            int64_t best = -1, smallest = 0;
            std::string tried;
            for (size_t c = 0; c < grid.size(); ++c) {
                if (density[c] < density[static_cast<size_t>(smallest)]) smallest = static_cast<int64_t>(c);
                if (density[c] > target + 1e-9) continue;
                if (accuracy[c] < 0) accuracy[c] = in.accuracy(content_chooser(grid[c]));
                char b[192];
                std::snprintf(b, sizeof b, "%s%s %.4f %.2f%%", tried.empty() ? "" : ", ", grid[c].expression.c_str(), density[c], 100 * accuracy[c]);
                tried += b;
                // Ties to the denser candidate, nearer the target.
                if (best < 0 || accuracy[c] > accuracy[static_cast<size_t>(best)] ||
                    (accuracy[c] == accuracy[static_cast<size_t>(best)] && density[c] > density[static_cast<size_t>(best)]))
                    best = static_cast<int64_t>(c);
            }
            const ContentCandidate& chosen = grid[static_cast<size_t>(best >= 0 ? best : smallest)];
            char line[256];
            std::snprintf(line, sizeof line, "%s at %g%%: ", family.c_str(), 100 * target);
            notes.push_back(line + (tried.empty() ? "no candidate within the density on validation; the smallest, " + chosen.expression
                                                  : "validation density and accuracy of each candidate within it: " + tried +
                                                        "; chosen " + chosen.expression));
            RulerMethod m;
            m.name = family;
            m.target = target;
            m.masks = content_chooser(chosen);
            m.detail = chosen.expression + (causal ? ", causal" : "") + ", chosen on validation (" +
                       (family == "lsh" ? "rotations from seed 0" : "anchors fitted on the training stream") + ")";
            m.pair_density = true;
            m.time = [chosen](const Tensor& q, const Tensor& k, const Tensor& v, int repeats) { return content_time(chosen, q, k, v, repeats); };
            out.push_back(std::move(m));
        }
    }
    return out;
}

RulerMethod ruler_favor(int64_t layers, int64_t heads, int64_t head_dim, bool causal, const ContentFamilyOptions& o) {
    // Features per (layer, head), drawn once (seed 0, draw 0): what favor(features) draws.
    auto features = std::make_shared<std::vector<std::vector<FavorFeatures>>>();
    for (int64_t l = 0; l < layers; ++l) {
        features->emplace_back();
        for (int64_t h = 0; h < heads; ++h) features->back().push_back(favor_features_draw(0, l, h, 0, o.features, head_dim));
    }
    RulerMethod m;
    m.name = "favor+";
    m.target = 1;
    m.detail = "favor(" + std::to_string(o.features) + ")" + (causal ? ", causal (prefix sums)" : "") +
               ", features fixed a priori (the language's default), seed 0: no mask, an estimate of the dense attention; measured by "
               "its output error on the dense teacher's q, k, v of every layer, and its answers with its estimate in place of every "
               "layer's attention";
    m.output = [features, causal](int64_t l, const Tensor& q, const Tensor& k, const Tensor& v) {
        FavorOptions fo;
        fo.causal = causal;
        fo.threads = 1;
        return favor_forward(q, k, v, (*features)[static_cast<size_t>(l)], fo).o;
    };
    m.time = [features, causal](const Tensor& q, const Tensor& k, const Tensor& v, int repeats) {
        FavorOptions fo;
        fo.causal = causal;
        fo.threads = 1;
        std::vector<double> t;
        for (int rep = 0; rep < std::max(1, repeats); ++rep) {
            const auto t0 = std::chrono::steady_clock::now();
            favor_forward(q, k, v, (*features)[0], fo);
            t.push_back(ms_since(t0));
        }
        return std::pair<double, double>{0.0, median_of(t)};
    };
    return m;
}

} // namespace sparsa::learn
