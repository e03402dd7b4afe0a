// Which parts of a script's expression allow a pair: the top-level `|` operands of the attend
// line that a (layer, head) uses, each evaluated alone, for the viewer's hover explanation.
#pragma once

#include "dsl/pattern.hpp"
#include "dsl/script.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::dsl {

// One operand of the attend line's top-level union, as written and as evaluated.
struct PatternPart {
    std::string text;       // its source text, e.g. "window(256)" or "global(first(64))"
    int32_t begin = 0;      // byte span in the script's text (-1 when it comes from a name's body)
    int32_t end = 0;
    PatternPtr pattern;     // the operand alone (null when it is not a pattern, e.g. a set)
    // The operand compiled at the parts' n and block, so a pair is answered in O(1) (the
    // predicate, pattern_allowed, takes O(n B) for random(outside = P)); null when it is not a
    // pattern or is content-based (its pairs depend on Q and K).
    std::shared_ptr<const BlockMask> mask;
};

struct PatternParts {
    std::vector<PatternPart> parts;  // [operands] in source order
    int64_t line = 0;                // 1-based line of the attend statement used
    bool causal = false;             // the script's `causal` statement cuts every k > q
    int64_t n = 0;                   // the sequence length and block the parts were compiled at
    int32_t block = 0;
};

// The parts of the attend line chosen for (layer, head) at sequence length n and block size B.
// When that line has a single operand that is a name or a call (`attend = longformer(...)`), its
// evaluated pattern's own unions are split instead, labelled by pattern_key. Throws ScriptError
// as script_pattern does.
PatternParts script_pattern_parts(const Script& script, int64_t n, int32_t block, int64_t layer,
                                  int64_t head);

// Indices into parts.parts of the operands that allow (q, k) (0 <= q, k < n); empty when none
// does, or when `causal` cuts the pair (k > q). Non-empty exactly when the compiled mask keeps it.
std::vector<size_t> pattern_parts_allowing(const PatternParts& parts, int64_t n, int32_t block,
                                           int64_t q, int64_t k);

} // namespace sparsa::dsl
