// Randomly generated scripts, checked pair by pair. Each generated script comes with its own
// oracle, built here straight from the spec's table (not from pattern_allowed), so this tests
// the whole chain: grammar and precedence, checker, evaluator (lets, defs, selectors, h and l,
// token sets, `causal`) and compiler.
#include "dsl/script.hpp"

#include <catch2/catch.hpp>

#include <functional>
#include <random>
#include <sstream>

using namespace sparsa;
using namespace sparsa::dsl;

namespace {

// What an oracle may read besides (q, k).
struct At {
    int64_t n = 0, block = 0, layer = 0, head = 0;
    bool causal = false;
};
using Pred = std::function<bool(int64_t q, int64_t k, const At&)>;
using SetPred = std::function<bool(int64_t t, const At&)>;

struct Gen {
    std::mt19937_64 rng;
    explicit Gen(uint64_t seed) : rng(seed) {}

    int64_t pick(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }
    bool coin(double p = 0.5) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

    // A small integer parameter: a literal, or an expression over h and l.
    std::pair<std::string, std::function<int64_t(const At&)>> number(int64_t lo, int64_t hi) {
        int64_t base = pick(lo, hi);
        switch (pick(0, 5)) {
        case 0: return {std::to_string(base) + " + h", [base](const At& a) { return base + a.head; }};
        case 1: return {"(" + std::to_string(base) + " + l * 2)", [base](const At& a) { return base + a.layer * 2; }};
        case 2: return {"max(" + std::to_string(base) + ", 1)", [base](const At&) { return std::max<int64_t>(base, 1); }};
        default: return {std::to_string(base), [base](const At&) { return base; }};
        }
    }

    std::pair<std::string, SetPred> token_set(int depth = 0) {
        if (depth < 2 && coin(0.25)) {
            auto [a, pa] = token_set(depth + 1);
            auto [b, pb] = token_set(depth + 1);  // (depth > 0 marks an operand of | or &)
            if (coin()) return {"(" + a + " | " + b + ")", [pa = pa, pb = pb](int64_t t, const At& at) { return pa(t, at) || pb(t, at); }};
            return {"(" + a + " & " + b + ")", [pa = pa, pb = pb](int64_t t, const At& at) { return pa(t, at) && pb(t, at); }};
        }
        switch (pick(0, 5)) {
        case 0: {
            int64_t g = pick(0, 80);
            return {"first(" + std::to_string(g) + ")", [g](int64_t t, const At&) { return t < g; }};
        }
        case 1: {
            int64_t g = pick(0, 80);
            return {"last(" + std::to_string(g) + ")", [g](int64_t t, const At& a) { return t >= a.n - g; }};
        }
        case 2: {
            int64_t lo = pick(0, 150), hi = lo + pick(0, 100);
            // `..` binds looser than `&` and `|`, so a range inside a combination needs parentheses.
            std::string range = std::to_string(lo) + ".." + std::to_string(hi);
            return {depth > 0 ? "(" + range + ")" : range, [lo, hi](int64_t t, const At&) { return t >= lo && t < hi; }};
        }
        case 3: {
            int64_t p = pick(1, 60);
            if (coin()) return {"every(" + std::to_string(p) + ")", [p](int64_t t, const At&) { return t % p == 0; }};
            int64_t o = pick(0, 40);
            if (coin()) {
                return {"every(" + std::to_string(p) + ", offset = " + std::to_string(o) + ")",
                        [p, o](int64_t t, const At&) { return t >= o && (t - o) % p == 0; }};
            }
            int64_t w = pick(0, p);
            return {"every(" + std::to_string(p) + ", offset = " + std::to_string(o) + ", width = " + std::to_string(w) + ")",
                    [p, o, w](int64_t t, const At&) { return t >= o && (t - o) % p < w; }};
        }
        default: {
            std::vector<int64_t> members;
            std::string text = "{";
            for (int64_t i = 0, count = pick(0, 5); i < count; ++i) {
                members.push_back(pick(0, 250));
                text += (i ? ", " : "") + std::to_string(members.back());
            }
            return {text + "}", [members](int64_t t, const At&) { return std::find(members.begin(), members.end(), t) != members.end(); }};
        }
        }
    }

    std::pair<std::string, Pred> leaf() {
        switch (pick(0, 18)) {
        case 0: return {"dense", [](int64_t, int64_t, const At&) { return true; }};
        case 1: return {"empty", [](int64_t, int64_t, const At&) { return false; }};
        case 2: return {"causal", [](int64_t q, int64_t k, const At&) { return k <= q; }};
        case 3: {
            auto [w, fw] = number(0, 40);
            return {"window(" + w + ")", [fw = fw](int64_t q, int64_t k, const At& a) { return std::abs(q - k) <= fw(a); }};
        }
        case 4: {
            int64_t left = pick(-10, 40), right = pick(-10, 40);
            return {"window(left = " + std::to_string(left) + ", right = " + std::to_string(right) + ")",
                    [left, right](int64_t q, int64_t k, const At&) { return q - left <= k && k <= q + right; }};
        }
        case 5: {
            int64_t w = pick(0, 8), d = pick(1, 40);
            return {"dilated(" + std::to_string(w) + ", " + std::to_string(d) + ")",
                    [w, d](int64_t q, int64_t k, const At&) { return (k - q) % d == 0 && std::abs(k - q) <= w * d; }};
        }
        case 6: {
            int64_t s = pick(1, 90);
            return {"strided(" + std::to_string(s) + ")", [s](int64_t q, int64_t k, const At&) { return (q - k) % s == 0; }};
        }
        case 7: {
            int64_t l = pick(1, 70), c = pick(0, l);
            return {"fixed(" + std::to_string(l) + ", " + std::to_string(c) + ")",
                    [l, c](int64_t q, int64_t k, const At&) { return q / l == k / l || k % l >= l - c; }};
        }
        case 8: {
            int64_t c = pick(1, 90);
            return {"chunk(" + std::to_string(c) + ")", [c](int64_t q, int64_t k, const At&) { return q / c == k / c; }};
        }
        case 9: {
            auto [r, fr] = number(0, 2);
            return {"band(" + r + ")", [fr = fr](int64_t q, int64_t k, const At& a) { return std::abs(q / a.block - k / a.block) <= fr(a); }};
        }
        case 10: {
            int64_t p = pick(0, 120);
            return {"prefix(" + std::to_string(p) + ")", [p](int64_t q, int64_t k, const At&) { return k < p || k <= q; }};
        }
        case 11: {
            auto [s, fs] = token_set();
            const char* kind[] = {"global", "rows", "columns"};
            int which = static_cast<int>(pick(0, 2));
            return {std::string(kind[which]) + "(" + s + ")", [fs = fs, which](int64_t q, int64_t k, const At& a) {
                        return which == 0 ? fs(q, a) || fs(k, a) : which == 1 ? fs(q, a) : fs(k, a);
                    }};
        }
        case 12: {
            auto [s, fs] = token_set();
            return {"segments(" + s + ")", [fs = fs](int64_t q, int64_t k, const At& a) {
                        auto segment = [&](int64_t t) {
                            int64_t starts = 0;
                            for (int64_t m = 1; m <= t; ++m) starts += fs(m, a) ? 1 : 0;
                            return starts;
                        };
                        return segment(q) == segment(k);
                    }};
        }
        case 13: {
            int64_t r = pick(0, 3), w = pick(1, 30);
            return {"window2d(" + std::to_string(r) + ", width = " + std::to_string(w) + ")",
                    [r, w](int64_t q, int64_t k, const At&) { return std::abs(q % w - k % w) <= r && std::abs(q / w - k / w) <= r; }};
        }
        case 14: {
            int64_t w = pick(1, 30);
            return {"axial(width = " + std::to_string(w) + ")",
                    [w](int64_t q, int64_t k, const At&) { return q / w == k / w || q % w == k % w; }};
        }
        case 15: {
            int64_t r = pick(0, 4), seed = pick(0, 1000);
            return {"random(" + std::to_string(r) + ", seed = " + std::to_string(seed) + ")",
                    [r, seed](int64_t q, int64_t k, const At& a) {
                        int64_t qb = q / a.block, blocks = (a.n + a.block - 1) / a.block;
                        auto drawn = random_row_blocks(static_cast<uint64_t>(seed), a.layer, a.head, qb,
                                                       a.causal ? qb + 1 : blocks, r);
                        return std::find(drawn.begin(), drawn.end(), k / a.block) != drawn.end();
                    }};
        }
        case 16: {
            int64_t w = pick(0, 20);
            return {"local_or_strided(" + std::to_string(w) + ")",
                    [w](int64_t q, int64_t k, const At&) { return std::abs(q - k) <= w || (q - k) % 5 == 0; }};
        }
        case 17: {
            // Drawn outside window(w): a block is taken when some pair of it is within w (and,
            // under causal, has k <= q: the attend line's causal applies to P too).
            int64_t r = pick(0, 4), seed = pick(0, 1000), w = pick(0, 40);
            return {"random(" + std::to_string(r) + ", seed = " + std::to_string(seed) + ", outside = window(" + std::to_string(w) + "))",
                    [r, seed, w](int64_t q, int64_t k, const At& a) {
                        const int64_t B = a.block, qb = q / B, blocks = (a.n + B - 1) / B;
                        const int64_t q0 = qb * B, q1 = std::min(a.n, q0 + B) - 1;
                        std::vector<int64_t> candidates;
                        for (int64_t kb = 0; kb < (a.causal ? qb + 1 : blocks); ++kb) {
                            const int64_t k0 = kb * B, k1 = std::min(a.n, k0 + B) - 1;
                            // The closest pair's distance (under causal kb <= qb, and k <= q counts).
                            const int64_t gap = a.causal ? q0 - k1 : std::max<int64_t>({0, k0 - q1, q0 - k1});
                            if (gap > w) candidates.push_back(kb);
                        }
                        auto drawn = random_row_blocks(static_cast<uint64_t>(seed), a.layer, a.head, qb,
                                                       static_cast<int64_t>(candidates.size()), r);
                        for (int32_t i : drawn) {
                            if (candidates[static_cast<size_t>(i)] == k / B) return true;
                        }
                        return false;
                    }};
        }
        default: {
            return {"shared", [](int64_t q, int64_t k, const At&) { return std::abs(q - k) <= 3 || k < 8; }};
        }
        }
    }

    // rank: | 1, - 2, & 3, ! and leaves 4. Parentheses only where the spec's precedence needs them.
    struct Node {
        std::string text;
        Pred pred;
        int rank;
    };

    Node pattern(int depth) {
        if (depth >= 4 || coin(0.35)) {
            auto [text, pred] = leaf();
            return {text, pred, 4};
        }
        int op = static_cast<int>(pick(0, 9));
        if (op == 9) {
            Node child = pattern(depth + 1);
            std::string text = child.rank >= 4 ? child.text : "(" + child.text + ")";
            return {"!" + text, [p = child.pred](int64_t q, int64_t k, const At& a) { return !p(q, k, a); }, 4};
        }
        const char symbol = op < 4 ? '|' : op < 7 ? '&' : '-';
        const int rank = symbol == '|' ? 1 : symbol == '-' ? 2 : 3;
        Node lhs = pattern(depth + 1), rhs = pattern(depth + 1);
        std::string l = lhs.rank >= rank ? lhs.text : "(" + lhs.text + ")";
        std::string r = rhs.rank > rank ? rhs.text : "(" + rhs.text + ")";
        Pred p;
        if (symbol == '|') p = [a = lhs.pred, b = rhs.pred](int64_t q, int64_t k, const At& at) { return a(q, k, at) || b(q, k, at); };
        if (symbol == '&') p = [a = lhs.pred, b = rhs.pred](int64_t q, int64_t k, const At& at) { return a(q, k, at) && b(q, k, at); };
        if (symbol == '-') p = [a = lhs.pred, b = rhs.pred](int64_t q, int64_t k, const At& at) { return a(q, k, at) && !b(q, k, at); };
        return {l + " " + symbol + " " + r, p, rank};
    }
};

struct Line {
    int64_t head_lo, head_hi, layer_lo, layer_hi;
    Pred pred;
};

} // namespace

TEST_CASE("500 random scripts match their token-level oracle pair by pair", "[random-scripts]") {
    Gen gen(20261122);
    int scripts = 0;
    for (int case_index = 0; case_index < 500; ++case_index) {
        const int64_t block = int64_t{16} << gen.pick(0, 2);
        const int64_t heads = gen.pick(1, 3), layers = gen.pick(1, 3);
        const bool causal = gen.coin(0.3);
        std::ostringstream text;
        text << "# random script " << case_index << "\n";
        text << "block " << block << "\nheads " << heads << "\nlayers " << layers << "\n";
        if (causal) text << "causal\n";
        text << "def local_or_strided(w, s = 5) = window(w) | strided(s)\n";
        text << "let shared = window(3) | columns(first(8))\n";
        std::vector<Line> lines;
        Gen::Node plain = gen.pattern(0);
        text << "attend = " << plain.text << "\n";
        lines.push_back({0, heads, 0, layers, plain.pred});
        for (int64_t extra = gen.pick(0, 2); extra > 0; --extra) {
            Gen::Node node = gen.pattern(1);
            int64_t h0 = gen.pick(0, heads - 1), h1 = gen.pick(h0 + 1, heads);
            int64_t l0 = gen.pick(0, layers - 1), l1 = gen.pick(l0 + 1, layers);
            std::string selector;
            switch (gen.pick(0, 3)) {
            case 0: selector = "head " + std::to_string(h0) + ".." + std::to_string(h1); l0 = 0; l1 = layers; break;
            case 1: selector = "layer " + std::to_string(l0) + ".." + std::to_string(l1); h0 = 0; h1 = heads; break;
            case 2: selector = "head " + std::to_string(h0); h1 = h0 + 1; l0 = 0; l1 = layers; break;
            default: selector = "layer " + std::to_string(l0) + ".." + std::to_string(l1) + ", head " +
                                std::to_string(h0) + ".." + std::to_string(h1);
            }
            text << "attend[" << selector << "] = " << node.text << "\n";
            lines.push_back({h0, h1, l0, l1, node.pred});
        }
        const std::string script_text = text.str();
        INFO(script_text);
        ScriptPtr script = script_parse(script_text, "random.pat");

        const int64_t random_n = gen.pick(2, 3 * block);
        for (int64_t n : {int64_t{1}, block - 1, block, block + 1, random_n + (random_n % block == 0 ? 1 : 0)}) {
            CompileOptions options;
            options.n = n;
            options.threads = static_cast<int>(gen.pick(1, 3));
            Compiled compiled = script_compile(*script, options);
            for (int64_t l = 0; l < layers; ++l) {
                for (int64_t h = 0; h < heads; ++h) {
                    const Line* chosen = nullptr;
                    for (const auto& line : lines) {
                        if (h >= line.head_lo && h < line.head_hi && l >= line.layer_lo && l < line.layer_hi) chosen = &line;
                    }
                    At at{n, block, l, h, causal};
                    const BlockMask& mask = compiled.masks.at(l, h);
                    block_mask_validate(mask, "compiled mask");
                    for (int64_t q = 0; q < n; ++q) {
                        for (int64_t k = 0; k < n; ++k) {
                            bool want = chosen->pred(q, k, at) && (!causal || k <= q);
                            if (mask.allowed(q, k) != want) {
                                FAIL("n=" << n << " layer " << l << " head " << h << " pair (q=" << q << ", k=" << k
                                          << "): compiled " << mask.allowed(q, k) << ", spec " << want);
                            }
                        }
                    }
                }
            }
        }
        ++scripts;
    }
    CHECK(scripts == 500);
}
