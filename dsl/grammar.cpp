// Instantiates the X3 grammar of grammar_def.hpp: the one translation unit that compiles it.
#include "dsl/grammar.hpp"

#include "dsl/grammar_def.hpp"

namespace sparsa::dsl {

std::variant<ast::Script, SyntaxError> grammar_parse(std::string_view text) {
    namespace x3 = boost::spirit::x3;
    const char* first = text.data();
    const char* const last = text.data() + text.size();
    const grammar::SourceRange source{text.data(), last};
    int depth = 0;
    int* depth_ptr = &depth;
    ast::Script script;
    auto const parser = x3::with<grammar::source_tag>(source)[
        x3::with<grammar::depth_tag>(depth_ptr)[grammar::script]];
    try {
        bool ok = x3::phrase_parse(first, last, parser, grammar::skipper, script);
        if (!ok) {
            // `*statement > end_of_script` either succeeds or throws; keep a clear answer anyway.
            const char* at = grammar::skip_blank(first, last);
            return SyntaxError{static_cast<int32_t>(at - text.data()), 1, "statement"};
        }
    } catch (const x3::expectation_failure<const char*>& failure) {
        // Point at the next thing on the same line, or at the end of the line where something
        // was missing (not at whatever the next line holds).
        const char* at = failure.where();
        while (at < last && (*at == ' ' || *at == '\t')) ++at;
        if (at == last) {  // at the end: point just after the last thing written
            while (at > text.data() && (at[-1] == ' ' || at[-1] == '\t' || at[-1] == '\r' || at[-1] == '\n')) --at;
        }
        return SyntaxError{static_cast<int32_t>(at - text.data()), 1, failure.which()};
    }
    return script;
}

} // namespace sparsa::dsl
