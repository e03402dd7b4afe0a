// Deep and hostile scripts: long chains of lets and defs compile, deeper nesting stops with a
// diagnostic (never a stack overflow, on a thread with a small stack too), and script files
// that are not text files are refused before they are read.
#include "dsl/eval.hpp"
#include "dsl/pattern.hpp"
#include "dsl/script.hpp"
#include "dsl/stack_guard.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <thread>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace sparsa;
using namespace sparsa::dsl;

namespace {

// `let a1 = window(1)`, `let a2 = a1 | window(2)`, ..., `attend = aN`.
std::string let_chain(int count) {
    std::string text = "let a1 = window(1)\n";
    for (int i = 2; i <= count; ++i) {
        text += "let a" + std::to_string(i) + " = a" + std::to_string(i - 1) + " | window(" + std::to_string(i) + ")\n";
    }
    return text + "attend = a" + std::to_string(count) + "\n";
}

// `def f1(x) = x | window(1)`, `def f2(x) = f1(x) | window(2)`, ..., `attend = fN(window(0))`.
std::string def_chain(int count) {
    std::string text = "def f1(x) = x | window(1)\n";
    for (int i = 2; i <= count; ++i) {
        text += "def f" + std::to_string(i) + "(x) = f" + std::to_string(i - 1) + "(x) | window(" + std::to_string(i) + ")\n";
    }
    return text + "attend = f" + std::to_string(count) + "(window(0))\n";
}

Compiled compile_text(const std::string& text, int64_t n = 4096) {
    ScriptPtr script = script_parse(text, "deep.pat");
    CompileOptions options;
    options.n = n;
    options.threads = 2;
    return script_compile(*script, options);
}

// What compiling the text says: "" when it compiles, else the error's message.
std::string compile_error(const std::string& text) {
    try {
        compile_text(text, 1024);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

// Runs fn on a thread whose stack is exactly `bytes` long (as a Python or worker thread may
// have), above a guard page that turns an overflow into a crash; rethrows what fn threw. (The
// stack is our own: pthread_attr_setstacksize may hand out a larger cached one.)
void on_stack(size_t bytes, const std::function<void()>& fn) {
    struct Job {
        const std::function<void()>* fn;
        std::exception_ptr error;
    } job{&fn, nullptr};
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* memory = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(memory != MAP_FAILED);
    REQUIRE(mprotect(memory, page, PROT_NONE) == 0);  // the stack grows down onto this page
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    REQUIRE(pthread_attr_setstack(&attr, static_cast<char*>(memory) + page, bytes) == 0);
    pthread_t thread;
    auto body = [](void* p) -> void* {
        auto* j = static_cast<Job*>(p);
        try {
            (*j->fn)();
        } catch (...) {
            j->error = std::current_exception();
        }
        return nullptr;
    };
    REQUIRE(pthread_create(&thread, &attr, body, &job) == 0);
    pthread_join(thread, nullptr);
    pthread_attr_destroy(&attr);
    munmap(memory, bytes + page);
    if (job.error) std::rethrow_exception(job.error);
}

} // namespace

TEST_CASE("a chain of 3000 lets compiles: lets are evaluated oldest first, not nested", "[dsl][limits]") {
    Compiled c = compile_text(let_chain(3000));
    // The union of window(1) .. window(3000) is window(3000).
    Compiled same = compile_text("attend = window(3000)\n");
    CHECK(c.masks.at(0, 0).col_idx == same.masks.at(0, 0).col_idx);
    CHECK(c.masks.at(0, 0).bits == same.masks.at(0, 0).bits);
}

TEST_CASE("a chain of 2000 defs, each calling the one before, compiles", "[dsl][limits]") {
    Compiled c = compile_text(def_chain(2000));
    Compiled same = compile_text("attend = window(2000)\n");
    CHECK(c.masks.at(0, 0).col_idx == same.masks.at(0, 0).col_idx);
    CHECK(c.masks.at(0, 0).bits == same.masks.at(0, 0).bits);
}

TEST_CASE("deeper chains of defs stop with a diagnostic at the call", "[dsl][limits]") {
    const std::string message = compile_error(def_chain(kMaxCallDepth + 10));
    CHECK(message.find("definitions call each other more than " + std::to_string(kMaxCallDepth) + " levels deep") !=
          std::string::npos);
    CHECK(message.find("join some of them") != std::string::npos);
}

TEST_CASE("deep nesting stops with a diagnostic and a caret", "[dsl][limits]") {
    const std::string parens = "attend = " + std::string(10000, '(') + "dense" + std::string(10000, ')') + "\n";
    std::string message = compile_error(parens);
    CHECK(message.find("deep.pat:1:110: error: expression nested too deeply (more than 100 levels)") != std::string::npos);
    CHECK(message.find("split the expression with let") != std::string::npos);
    CHECK(message.find('^') != std::string::npos);
    // 100 levels are allowed.
    CHECK(compile_error("attend = " + std::string(99, '(') + "dense" + std::string(99, ')') + "\n").empty());

    std::string pipes = "attend = window(0)";
    for (int i = 1; i < 10000; ++i) pipes += " | window(" + std::to_string(i) + ")";
    message = compile_error(pipes + "\n");
    CHECK(message.find("this pattern has more than " + std::to_string(kMaxPatternParts) + " parts") != std::string::npos);
    // Just under the limit compiles (a union 4999 deep).
    pipes = "attend = window(0)";
    for (int i = 1; i < 4999; ++i) pipes += " | window(" + std::to_string(i) + ")";
    CHECK(compile_error(pipes + "\n").empty());
}

TEST_CASE("on a thread with a small stack, deep scripts fail cleanly", "[dsl][limits]") {
    // 256 KiB: the reserve itself. Nothing recursive may run; parsing a short script does not recurse.
    std::string message;
    on_stack(512 * 1024, [&] {
        CHECK(stack_left() < 512 * 1024);
        CHECK(stack_left() > 256 * 1024);
        message = compile_error(def_chain(2000));
    });
    CHECK(message.find("evaluating this expression nests too deeply for the stack of this thread") != std::string::npos);
    // Lets need no stack per link: the chain compiles on the small stack too.
    on_stack(512 * 1024, [&] { message = compile_error(let_chain(3000)); });
    CHECK(message.empty());
}

TEST_CASE("patterns thousands deep compile, compare and free without recursion", "[dsl][limits]") {
    // Built with the API (no evaluator limit): a union 100000 deep, handled on a 256 KiB stack.
    PatternPtr p = pattern_window(0, 0);
    for (int i = 1; i < 100000; ++i) p = pattern_union(p, pattern_window(i % 50, 0));
    on_stack(256 * 1024, [&] {
        BlockMask mask = pattern_compile(*p, 1000, 16, 1);
        BlockMask same = pattern_compile(*pattern_window(49, 0), 1000, 16, 1);
        CHECK(mask.col_idx == same.col_idx);
        CHECK(mask.bits == same.bits);
        CHECK(pattern_allowed(*p, 1000, 16, 500, 451));
        CHECK_FALSE(pattern_allowed(*p, 1000, 16, 500, 450));
        CHECK_FALSE(pattern_is_data_dependent(*p));
        CHECK(pattern_key(*p).rfind("union(union(union(", 0) == 0);
        p.reset();  // the last owner: freed here, on the small stack
    });
}

TEST_CASE("pattern_allowed evaluates a right operand only when the left does not decide", "[dsl][limits]") {
    // A content family (lsh) throws when evaluated alone: the left operand must decide first.
    // (It may stand only under unions: & and - refuse it, tests/dsl/test_content.cpp.)
    sparsa::ContentSpec spec;
    spec.buckets = 4;
    spec.chunk = 16;
    PatternPtr lsh = pattern_content(spec);
    CHECK(pattern_allowed(*pattern_union(pattern_dense(), lsh), 64, 16, 3, 9));
    CHECK_THROWS(pattern_allowed(*pattern_union(pattern_empty(), lsh), 64, 16, 3, 9));
    CHECK_FALSE(pattern_allowed(*pattern_intersect(pattern_empty(), pattern_dense()), 64, 16, 3, 9));
    CHECK(pattern_allowed(*pattern_difference(pattern_dense(), pattern_window(1, 1)), 64, 16, 3, 9));
    CHECK_FALSE(pattern_allowed(*pattern_difference(pattern_dense(), pattern_window(1, 1)), 64, 16, 3, 4));
    CHECK(pattern_allowed(*pattern_complement(pattern_complement(pattern_window(0, 0))), 64, 16, 3, 3));
}

TEST_CASE("script files: devices and folders are refused, pipes are read, size is limited", "[dsl][limits]") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("sparsa_limits_" + std::to_string(getpid()));
    fs::create_directories(dir);
    auto refused = [](const std::string& path) -> std::string {
        try {
            script_load(path);
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    };
    CHECK(refused("/dev/zero").find("cannot read '/dev/zero': not a regular file (a character device") != std::string::npos);
    CHECK(refused(dir.string()).find("it is a folder") != std::string::npos);

    // A FIFO with a writer is read to its end.
    const std::string fifo = (dir / "script.fifo").string();
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    std::thread writer([&] {
        std::ofstream out(fifo);
        out << "attend = window(4)\n";
    });
    ScriptPtr script = script_load(fifo);
    writer.join();
    CHECK(script_source(*script).text == "attend = window(4)\n");

    // Larger than the limit: refused, naming it.
    const fs::path big = dir / "big.pat";
    {
        std::ofstream out(big, std::ios::binary);
        std::string line(1 << 20, ' ');
        for (size_t i = 0; i <= kMaxScriptBytes >> 20; ++i) out << line;
    }
    CHECK(refused(big.string()).find("scripts are limited to 16 MiB") != std::string::npos);
    fs::remove_all(dir);
}

TEST_CASE("a byte order mark is skipped; a NUL byte is named and shown", "[dsl][limits]") {
    ScriptPtr script = script_parse("\xEF\xBB\xBF" "attend = window(4)\n", "bom.pat");
    CHECK(script_source(*script).text == "attend = window(4)\n");
    try {
        script_parse(std::string("attend = dense\0 | window(2)\n", 28), "nul.pat");
        FAIL("a NUL byte was accepted");
    } catch (const ScriptError& e) {
        const std::string text = e.what();
        CHECK(text.find("nul.pat:1:15: error: a NUL byte") != std::string::npos);
        CHECK(text.find("attend = dense\\0 | window(2)") != std::string::npos);  // the whole line, \0 shown
        CHECK(text.find('\0') == std::string::npos);
    }
}

TEST_CASE("lines that read no h, l, random or load are judged the same for every (layer, head)", "[dsl][limits]") {
    auto judged = [](const std::string& text) {
        ScriptPtr script = script_parse(text, "j.pat");
        std::string out;
        for (const auto& line : script->attends) out += line.per_position ? '1' : '0';
        return out;
    };
    CHECK(judged("attend = window(4) | global(first(8))\n") == "0");
    CHECK(judged("attend = window(h)\n") == "1");
    CHECK(judged("attend = window(2 ^ l)\n") == "1");
    CHECK(judged("attend = window(H * L + n / B)\n") == "0");  // the same for every (layer, head)
    CHECK(judged("attend = random(2)\n") == "1");
    CHECK(judged("let w = h + 1\nlet v = w * 2\nattend = window(v)\n") == "1");     // through lets
    CHECK(judged("def f(x) = window(x + l)\nattend = f(3)\n") == "1");              // through a def's body
    CHECK(judged("def f(x) = window(x)\nattend = f(h)\n") == "1");                  // an argument
    CHECK(judged("def f(x = h) = window(x)\nattend = f()\n") == "1");               // a default
    CHECK(judged("def f(x) = window(x)\nattend = f(3)\n") == "0");
    CHECK(judged("def g(w) = random(w)\ndef f(x) = g(x)\nattend = f(3)\n") == "1");  // a chain of defs
    CHECK(judged("heads 2\nattend = window(1)\nattend[head 1] = window(h)\n") == "01");
    CHECK(judged(let_chain(3000)) == "0");
}

TEST_CASE("a line the same for every (layer, head) is evaluated once; per-position work is bounded", "[dsl][limits]") {
    // 1024 x 1024 (layer, head) pairs of a 3000-let chain: one evaluation, one shared mask.
    Compiled c = compile_text("heads 1024\nlayers 1024\n" + let_chain(3000), 64);
    CHECK(c.masks.unique_masks().size() == 1);
    // Per (layer, head), the same chain is evaluated again: bounded, with the place and why.
    std::string text = let_chain(3000);
    text.replace(text.find("window(1)"), 9, "window(h)");
    const std::string message = compile_error("heads 1024\nlayers 32\n" + text);
    CHECK(message.find("evaluating the script for its 32768 (layer, head) pairs takes more than " +
                       std::to_string(kMaxCompileSteps) + " steps") != std::string::npos);
    // Heads that differ are compiled apart, and right.
    Compiled per_head = compile_text("heads 3\nlet w = h + 1\nattend = window(w)\n", 256);
    CHECK(per_head.masks.unique_masks().size() == 3);
    CHECK(per_head.masks.at(0, 2).col_idx == compile_text("attend = window(3)\n", 256).masks.at(0, 0).col_idx);
}
