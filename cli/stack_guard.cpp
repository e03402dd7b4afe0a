// A SIGSEGV handler that tells a stack which cannot grow (a memory limit) from other faults.
#include "cli/stack_guard.hpp"

#include "io/atomic_file.hpp"

#include <algorithm>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <alloca.h>
#include <sys/resource.h>
#include <unistd.h>

namespace sparsa::cli {

namespace {

// The main stack's range: from g_stack_top down by at most g_stack_limit bytes (RLIMIT_STACK).
uintptr_t g_stack_top = 0;
uintptr_t g_stack_limit = 0;
char g_command[64];
alignas(16) char g_alt_stack[64 * 1024];

void say(const char* text) {
    size_t n = 0;
    while (text[n] != '\0') ++n;
    (void)!::write(2, text, n);
}

void segv_handler(int sig, siginfo_t* info, void*) {
    temp_files_remove_all();
    const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    // A guard gap lies below the stack: faults up to 1 MiB past the limit are the stack's too.
    if (g_stack_top != 0 && addr < g_stack_top && g_stack_top - addr <= g_stack_limit + (uintptr_t{1} << 20)) {
        // Within 256 KiB of the size limit: the stack is full, not short of memory.
        const bool full = g_stack_top - addr + (uintptr_t{256} << 10) >= g_stack_limit;
        say("sparsa ");
        say(g_command);
        say(full ? ": internal error: the stack is full (a script nested too deeply?) (please report it)\n"
                 : ": error: out of memory: the stack cannot grow under this memory limit (raise ulimit -v)\n");
        ::_exit(full ? 3 : 1);
    }
    (void)sig;  // SA_RESETHAND restored the default action: returning repeats the fault, which crashes
}

// The highest address of the [stack] mapping, from /proc/self/maps; 0 when not found.
uintptr_t stack_top() {
    std::FILE* maps = std::fopen("/proc/self/maps", "r");
    if (maps == nullptr) return 0;
    char line[512];
    uintptr_t top = 0;
    while (std::fgets(line, sizeof line, maps) != nullptr) {
        if (std::strstr(line, "[stack]") == nullptr) continue;
        unsigned long long begin = 0, end = 0;
        if (std::sscanf(line, "%llx-%llx", &begin, &end) == 2) top = static_cast<uintptr_t>(end);
        break;
    }
    std::fclose(maps);
    return top;
}

// Address space left under RLIMIT_AS (VmSize from /proc/self/status); SIZE_MAX when unlimited.
size_t address_space_left() {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return SIZE_MAX;
    std::FILE* status = std::fopen("/proc/self/status", "r");
    if (status == nullptr) return 0;
    char line[256];
    unsigned long long used_kb = 0;
    while (std::fgets(line, sizeof line, status) != nullptr) {
        if (std::sscanf(line, "VmSize: %llu kB", &used_kb) == 1) break;
    }
    std::fclose(status);
    const unsigned long long used = used_kb * 1024;
    return used < limit.rlim_cur ? static_cast<size_t>(limit.rlim_cur - used) : 0;
}

[[gnu::noinline]] void stack_touch(size_t bytes) {
    auto* lowest = static_cast<volatile char*>(alloca(bytes));
    lowest[0] = 0;  // the kernel extends the stack's mapping down to here, once
}

} // namespace

void stack_guard_install(const char* command, size_t reserve) {
    std::snprintf(g_command, sizeof g_command, "%s", command);
    struct rlimit limit {};
    g_stack_limit = ::getrlimit(RLIMIT_STACK, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
                        ? static_cast<uintptr_t>(limit.rlim_cur)
                        : uintptr_t{1} << 30;
    g_stack_top = stack_top();
    stack_t alt {};
    alt.ss_sp = g_alt_stack;
    alt.ss_size = sizeof g_alt_stack;
    if (::sigaltstack(&alt, nullptr) != 0) return;
    struct sigaction action {};
    action.sa_sigaction = segv_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    ::sigaction(SIGSEGV, &action, nullptr);
    // Never more than half of what the address space has left: the heap needs the rest.
    reserve = std::min(reserve, address_space_left() / 2);
    if (g_stack_top != 0 && reserve >= 4096 && reserve + (uintptr_t{512} << 10) < g_stack_limit) stack_touch(reserve);
}

} // namespace sparsa::cli
