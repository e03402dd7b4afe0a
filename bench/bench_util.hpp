// What every benchmark needs to say how its numbers were made: the machine, the build, the load,
// medians, and a results file written whole or not at all.
#pragma once

#include "io/atomic_file.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <stdexcept>
#include <fstream>
#include <string>
#include <vector>

namespace sparsa::bench {

// The command line of a benchmark: `--name value` options, and the command as typed (for the
// results file). An option not in `allowed`, or one without its value, prints `usage` and exits 2.
struct BenchArgs {
    std::string command;
    std::map<std::string, std::string> values;

    std::string text(const std::string& name, const std::string& fallback) const {
        auto it = values.find(name);
        return it == values.end() ? fallback : it->second;
    }
    int64_t integer(const std::string& name, int64_t fallback) const {
        auto it = values.find(name);
        return it == values.end() ? fallback : std::atoll(it->second.c_str());
    }
    double real(const std::string& name, double fallback) const {
        auto it = values.find(name);
        return it == values.end() ? fallback : std::atof(it->second.c_str());
    }
};

inline BenchArgs bench_args_parse(int argc, char** argv, const std::string& program, const std::vector<std::string>& allowed,
                                  const std::string& usage) {
    BenchArgs args;
    args.command = program;
    for (int i = 1; i < argc; ++i) {
        const std::string name = argv[i];
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end() || i + 1 >= argc) {
            if (i + 1 >= argc && std::find(allowed.begin(), allowed.end(), name) != allowed.end()) {
                std::cerr << program << ": " << name << " needs a value\n";
            }
            std::cerr << "usage: " << usage << "\n";
            std::exit(2);
        }
        args.values[name] = argv[++i];
        args.command += ' ' + name + ' ' + argv[i];
    }
    return args;
}

// A field of /proc (e.g. "VmHWM:" of /proc/self/status), as the number after it (0 if absent).
inline int64_t proc_field(const char* file, const std::string& key) {
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + key.size());
    }
    return 0;
}

// The CPU's model name from /proc/cpuinfo ("Intel(R) Xeon(R) Processor"), else the host name.
inline std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("model name", 0) == 0) {
            std::string m = line.substr(line.find(':') + 1);
            return m.substr(m.find_first_not_of(' '));
        }
    }
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    return host[0] != '\0' ? host : "unknown-cpu";
}

// "Intel(R) Xeon(R) Processor" -> "intel-xeon-processor": a file name for the results.
inline std::string slug(std::string s) {
    for (const char* mark : {"(R)", "(TM)", "(tm)"}) {
        for (size_t at; (at = s.find(mark)) != std::string::npos;) s.erase(at, std::string(mark).size());
    }
    std::string out;
    for (char c : s) {
        if (std::isalnum(static_cast<unsigned char>(c))) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        else if (!out.empty() && out.back() != '-') out += '-';
    }
    while (!out.empty() && out.back() == '-') out.pop_back();
    return out.empty() ? "unknown" : out;
}

// The median of the samples (the mean of the middle two for an even count).
inline double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// One number through a printf format: format("%.2f", x).
inline std::string format(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

// "| a | b |" and a newline: one row of a Markdown table.
inline std::string table_row(const std::vector<std::string>& cells) {
    std::string row = "|";
    for (const std::string& c : cells) row += " " + c + " |";
    return row + "\n";
}

// 1048576 -> "1,048,576".
inline std::string with_commas(int64_t v) {
    std::string s = std::to_string(v), out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i > 0 && s[i - 1] != '-' && (s.size() - i) % 3 == 0) out += ',';
        out += s[i];
    }
    return out;
}

// The 1, 5 and 15 minute load averages ("1.12 1.49 1.45"): timings on a busy machine say so.
inline std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
}

// How this benchmark was compiled, for the results file.
inline const char* build_type() {
#if defined(NDEBUG) && defined(__OPTIMIZE__)
    return "Release (optimised, NDEBUG)";
#elif defined(__OPTIMIZE__)
    return "optimised, assertions on";
#else
    return "Debug (not optimised): timings are not representative";
#endif
}

// Writes a results file whole or not at all, creating its folder. Throws sparsa::Error.
inline void results_write(const std::string& path, const std::string& text) {
    const std::filesystem::path out(path);
    std::error_code ec;
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path(), ec);
    AtomicFile file(path);
    file.write(text.data(), text.size());
    file.commit();
}

struct ChildOutput {
    std::string text;      // what `work` returned
    int64_t peak_kib = 0;  // the child's peak resident memory (ru_maxrss)
};

// The parent's side of a child process: everything it writes to `read_fd` (closed here), then
// its exit, with its peak resident memory. Throws std::runtime_error naming `what` if it failed.
inline ChildOutput child_collect(int read_fd, pid_t pid, const std::string& what) {
    std::string text;
    char buf[4096];
    for (ssize_t got; (got = read(read_fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(got));
    close(read_fd);
    int status = 0;
    struct rusage usage {};
    wait4(pid, &status, 0, &usage);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(what + ": the child process failed");
    return {text, static_cast<int64_t>(usage.ru_maxrss)};
}

// Runs `work` in a fresh child process (fork), so that its peak memory is its own, and returns
// the text it produced. Throws std::runtime_error naming `what` if the child fails; the child
// prints its own error to stderr first.
inline ChildOutput child_run(const std::function<std::string()>& work, const std::string& what) {
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        close(fds[0]);
        try {
            const std::string text = work();
            if (write(fds[1], text.data(), text.size()) != static_cast<ssize_t>(text.size())) _exit(2);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s: %s\n", what.c_str(), e.what());
            _exit(1);
        }
        _exit(0);
    }
    close(fds[1]);
    return child_collect(fds[0], pid, what);
}

} // namespace sparsa::bench
