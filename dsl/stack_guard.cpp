// The bounds of this thread's stack, from the threads library (see stack_guard.hpp for why).
#include "dsl/stack_guard.hpp"

#include <cstdint>
#include <limits>

#if defined(__linux__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace sparsa::dsl {

namespace {

// [low, high) of this thread's stack (it grows down, toward low); {0, 0} when unknown.
struct StackBounds {
    uintptr_t low = 0, high = 0;
};

StackBounds stack_bounds_read() {
    StackBounds b;
#if defined(__APPLE__)
    pthread_t self = pthread_self();
    b.high = reinterpret_cast<uintptr_t>(pthread_get_stackaddr_np(self));
    b.low = b.high - pthread_get_stacksize_np(self);
#elif defined(__linux__)
    // For the main thread glibc derives the size from RLIMIT_STACK, the most it may grow to.
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void* addr = nullptr;
        size_t size = 0;
        if (pthread_attr_getstack(&attr, &addr, &size) == 0 && addr != nullptr) {
            b.low = reinterpret_cast<uintptr_t>(addr);
            b.high = b.low + size;
        }
        pthread_attr_destroy(&attr);
    }
#endif
    return b;
}

} // namespace

size_t stack_left() {
    thread_local const StackBounds bounds = stack_bounds_read();
    const auto here = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    // Outside the bounds (a coroutine on its own stack, say) nothing is known.
    if (here <= bounds.low || here > bounds.high) return std::numeric_limits<size_t>::max();
    return here - bounds.low;
}

} // namespace sparsa::dsl
