// The grammar, the checker and the diagnostics, on hand-written cases: precedence, spans,
// the spec's own example diagnostic, did-you-mean, and hostile input.
#include "dsl/grammar.hpp"
#include "dsl/script.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace sparsa;
using namespace sparsa::dsl;

namespace {

// The diagnostics a script stops with (its formatted text), or "" when it is clean.
std::string diagnostics_of(const std::string& text, const std::string& name = "t.pat") {
    try {
        script_parse(text, name);
    } catch (const ScriptError& e) {
        return e.what();
    }
    return "";
}

// Kept pairs of (layer 0, head 0) as a string of 0/1 rows, for small n.
std::string pairs_of(const std::string& text, int64_t n, int32_t block = 16) {
    ScriptPtr script = script_parse(text, "t.pat");
    CompileOptions options;
    options.n = n;
    options.block = block;
    Compiled c = script_compile(*script, options);
    std::string out;
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = 0; k < n; ++k) out += c.masks.at(0, 0).allowed(q, k) ? '1' : '0';
        out += '\n';
    }
    return out;
}

} // namespace

TEST_CASE("the spec's example diagnostic, to the character", "[grammar]") {
    const std::string script = "# bigbird.pat - BigBird (ITC): sliding blocks + global tokens + random blocks\n"
                               "block 64\nheads 8\nlayers 6\n\n"
                               "let g = 2 * B                      # two global blocks\n"
                               "attend = band(1) | gobal(first(g)) | random(3, seed = 7)\n";
    CHECK(diagnostics_of(script, "bigbird.pat") ==
          "bigbird.pat:7:20: error: unknown pattern 'gobal'\n"
          "  attend = band(1) | gobal(first(g)) | random(3, seed = 7)\n"
          "                     ^~~~~\n"
          "  did you mean 'global'?");
}

TEST_CASE("syntax errors say where and what was expected", "[grammar]") {
    CHECK(diagnostics_of("attend = window(3") ==
          "t.pat:1:18: error: expected ')'\n  attend = window(3\n                   ^\n"
          "  is a bracket left open, or a comma missing between arguments?");
    CHECK(diagnostics_of("attend window(3)").find("t.pat:1:8: error: expected '='") == 0);
    CHECK(diagnostics_of("let = 4\nattend = dense").find("t.pat:1:5: error: expected a name") == 0);
    CHECK(diagnostics_of("attend = \n").find("error: expected an expression") != std::string::npos);
}

TEST_CASE("columns count characters and tabs keep the caret aligned", "[grammar]") {
    std::string d = diagnostics_of("attend =\tdense | wndow(3)  # é\n");
    CHECK(d.find("t.pat:1:18: error: unknown pattern 'wndow'") == 0);
    CHECK(d.find("\n  attend =\tdense | wndow(3)  # é\n          \t        ^~~~~\n") != std::string::npos);
    // A multi-byte character before the error counts as one column.
    d = diagnostics_of("let é = 3\n");
    CHECK(d.find("t.pat:1:5:") == 0);
}

TEST_CASE("precedence: ! then & then - then |, left to right", "[grammar]") {
    // window(1) | window(8) - window(2) & causal == window(1) | (window(8) - (window(2) & causal))
    const std::string spec = pairs_of("attend = window(1) | window(8) - window(2) & causal", 40);
    CHECK(spec == pairs_of("attend = window(1) | (window(8) - (window(2) & causal))", 40));
    CHECK(spec != pairs_of("attend = ((window(1) | window(8)) - window(2)) & causal", 40));
    // ! binds tighter than &: !causal & window(3) == (!causal) & window(3)
    CHECK(pairs_of("attend = !causal & window(3)", 40) == pairs_of("attend = (!causal) & window(3)", 40));
    // - and | are left-associative: a - b - c == (a - b) - c
    CHECK(pairs_of("attend = window(9) - window(5) - window(1)", 40) ==
          pairs_of("attend = (window(9) - window(5)) - window(1)", 40));
    // arithmetic: 2 ^ 3 ^ 2 = 2 ^ 9, 10 - 4 - 3 = 3, 7 / 2 = 3, -7 / 2 = -4 (floor), -7 % 3 = 2
    CHECK(pairs_of("attend = window(2 ^ 3 ^ 2 - 500)", 20) == pairs_of("attend = window(12)", 20));
    CHECK(pairs_of("attend = window(10 - 4 - 3)", 20) == pairs_of("attend = window(3)", 20));
    CHECK(pairs_of("attend = window(7 / 2)", 20) == pairs_of("attend = window(3)", 20));
    CHECK(pairs_of("attend = window(-7 / 2 + 6)", 20) == pairs_of("attend = window(2)", 20));
    CHECK(pairs_of("attend = window(-7 % 3)", 20) == pairs_of("attend = window(2)", 20));
    CHECK(pairs_of("attend = window(floor(sqrt(n)))", 50) == pairs_of("attend = window(7)", 50));
    CHECK(pairs_of("attend = window(ceil(log2(n)))", 50) == pairs_of("attend = window(6)", 50));
    // ranges take arithmetic: 0..n-1 is 0..(n-1)
    CHECK(pairs_of("attend = global(0..n-1)", 20) == pairs_of("attend = global(first(19))", 20));
}

TEST_CASE("lets, defs and keyword arguments", "[grammar]") {
    CHECK(pairs_of("def f(a, b = 2) = window(a) | strided(b)\nattend = f(1, b = 7)", 40) ==
          pairs_of("attend = window(1) | strided(7)", 40));
    CHECK(pairs_of("let w = B / 4\nattend = window(w)", 40) == pairs_of("attend = window(4)", 40));
    // a later let shadows the prelude's name; earlier lines keep seeing what they saw
    CHECK(pairs_of("let a = longformer(w = 2, g = 1)\ndef longformer(w) = window(w)\nattend = a | longformer(5)", 40) ==
          pairs_of("attend = window(5) | global(first(1))", 40));
}

TEST_CASE("did-you-mean finds close names and keywords", "[grammar]") {
    CHECK(closest_name("gobal", {"global", "window", "band"}) == "global");
    CHECK(closest_name("windw", {"global", "window", "band"}) == "window");
    CHECK(closest_name("zzzzzz", {"global", "window", "band"}) == "");
    CHECK(diagnostics_of("attend = window(lft = 3)").find("did you mean 'left'?") != std::string::npos);
    CHECK(diagnostics_of("let width = 3\nattend = window(widht)").find("did you mean 'width'?") != std::string::npos);
}

TEST_CASE("hostile input gives a diagnostic, never a crash", "[grammar]") {
    const std::string deep(5000, '(');
    CHECK(diagnostics_of("attend = " + deep).find("nested too deeply") != std::string::npos);
    CHECK(diagnostics_of("attend = " + std::string(5000, '!') + "dense").find("nested too deeply") != std::string::npos);
    CHECK(diagnostics_of("attend = window(99999999999999999999)").find("too large") != std::string::npos);
    CHECK_FALSE(diagnostics_of(std::string("attend = dense\0junk", 19)).empty());
    CHECK_FALSE(diagnostics_of("\xff\xfe attend = dense").empty());
    // A definition that doubles itself 40 times is refused, not evaluated for hours.
    std::string text = "let p0 = window(1)\n";
    for (int i = 1; i <= 40; ++i) {
        text += "let p" + std::to_string(i) + " = p" + std::to_string(i - 1) + " | p" + std::to_string(i - 1) + "\n";
    }
    text += "attend = p40\n";
    ScriptPtr script = script_parse(text, "t.pat");
    CompileOptions options;
    options.n = 64;
    CHECK_THROWS_WITH(script_compile(*script, options), Catch::Contains("more than 10000 parts"));
    std::string calls = "def f0(x) = window(x)\n";
    for (int i = 1; i <= 40; ++i) {
        calls += "def f" + std::to_string(i) + "(x) = f" + std::to_string(i - 1) + "(x) | f" + std::to_string(i - 1) + "(x)\n";
    }
    calls += "attend = f40(1)\n";
    script = script_parse(calls, "t.pat");
    CHECK_THROWS_AS(script_compile(*script, options), ScriptError);
}

TEST_CASE("settings and defaults", "[grammar]") {
    ScriptPtr s = script_parse("attend = dense", "t.pat");
    CHECK(script_settings(*s).block == 64);
    CHECK(script_settings(*s).heads == 1);
    CHECK(script_settings(*s).layers == 1);
    CHECK_FALSE(script_settings(*s).causal);
    s = script_parse("block 2 * 64\nheads 3\nlayers 2 ^ 2\ncausal\nattend = dense", "t.pat");
    CHECK(script_settings(*s).block == 128);
    CHECK(script_settings(*s).heads == 3);
    CHECK(script_settings(*s).layers == 4);
    CHECK(script_settings(*s).causal);
}

TEST_CASE("compile refuses bad options clearly", "[grammar]") {
    ScriptPtr s = script_parse("attend = dense", "t.pat");
    CompileOptions options;
    options.n = 0;
    CHECK_THROWS_WITH(script_compile(*s, options), Catch::Contains("at least 1"));
    options.n = 100;
    options.block = 48;
    CHECK_THROWS_WITH(script_compile(*s, options), Catch::Contains("use 16, 32, 64, 128 or 256"));
}
