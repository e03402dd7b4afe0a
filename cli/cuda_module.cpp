// Loading libsparsa_cli_cuda.so (cli/cuda_module.hpp): dlopen from the executable's folder, once,
// and the module's statuses turned back into this side's exceptions.
#include "cli/cuda_module.hpp"

#include "cli/cuda_module_abi.hpp"
#include "engine/error.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace sparsa::cli::cuda {

namespace {

// The folder of the running executable, from /proc/self/exe (not LD_LIBRARY_PATH, not the
// current folder: the module belongs to this sparsa). "" with `why` set when it cannot be read.
std::string executable_folder(std::string& why) {
    std::string path(4096, '\0');
    const ssize_t got = readlink("/proc/self/exe", path.data(), path.size());
    if (got <= 0 || static_cast<size_t>(got) >= path.size()) {
        why = std::string("cannot read /proc/self/exe: ") + (got < 0 ? std::strerror(errno) : "path too long");
        return "";
    }
    path.resize(static_cast<size_t>(got));
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : path.substr(0, slash);
}

[[noreturn]] void load_failed(const std::string& folder, const std::string& why) {
    throw Error(std::string("--engine cuda: this sparsa was built with the CUDA engine but ") + kModuleName +
                " could not be loaded from " + (folder.empty() ? std::string("its folder") : folder) + ": " + why +
                " (rebuild, or copy it beside sparsa)");
}

// The module's table; dlopen'ed on the first call and never closed (its CUDA runtime tears
// itself down at exit, as it did when linked in).
const SparsaCliCudaApi& api_load() {
    std::string why;
    const std::string folder = executable_folder(why);
    if (folder.empty()) load_failed(folder, why);
    const std::string path = folder + "/" + kModuleName;
    dlerror();
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        const char* reason = dlerror();
        const std::string error = reason != nullptr ? reason : "dlopen failed";
        if (error.find("failed to map segment") != std::string::npos) {
            // ld.so's words for mmap failing: the module is there but does not fit the address
            // space left (ulimit -v); rebuilding would not help.
            throw Error(std::string("--engine cuda: out of memory: ") + path +
                        " (the CUDA engine, about 14 MB) could not be mapped (raise the memory limit, ulimit -v)");
        }
        load_failed(folder, error);
    }
    const auto entry = reinterpret_cast<SparsaCliCudaEntry>(dlsym(handle, SPARSA_CLI_CUDA_ENTRY));
    if (entry == nullptr) {
        const char* error = dlerror();
        dlclose(handle);
        load_failed(folder, error != nullptr ? error : "no " SPARSA_CLI_CUDA_ENTRY);
    }
    const SparsaCliCudaApi* api = entry();
    // Deliberately not closed below: the module's constructors ran, and unloading CUDA's runtime
    // this early is not worth the risk for a process that is about to report and exit. Only the
    // table's first two fields are read before the version says how long the table is.
    if (api->version != SPARSA_CLI_CUDA_VERSION) {
        const bool older = api->version < SPARSA_CLI_CUDA_VERSION;
        throw Error(std::string("--engine cuda: ") + path + " is version " + std::to_string(api->version) +
                    " of the CUDA module's interface, but this sparsa needs version " + std::to_string(SPARSA_CLI_CUDA_VERSION) +
                    (older ? " (version 2 added content-based heads: lsh, anchors, favor): the module is older than sparsa"
                           : ": the module is newer than sparsa") +
                    " (rebuild both with cmake --build BUILD --target sparsa, or copy the libsparsa_cli_cuda.so built with "
                    "this sparsa beside it)");
    }
    if (api->layout != sparsa_cli_cuda_layout()) {
        load_failed(folder, path + " is version " + std::to_string(api->version) + " but its types have layout " +
                                std::to_string(api->layout) + " where this sparsa's have " + std::to_string(sparsa_cli_cuda_layout()) +
                                ": it was built from other sources");
    }
    return *api;
}

const SparsaCliCudaApi& api() {
    static const SparsaCliCudaApi& loaded = api_load();   // a throw leaves it unloaded: the next call retries
    return loaded;
}

// The module's status as this side's exception, as if the engine had thrown it here.
void check(const SparsaCliCudaStatus& status) {
    const std::string message = status.message != nullptr ? status.message : "(no message)";
    switch (status.code) {
    case sparsa_cli_cuda_ok: return;
    case sparsa_cli_cuda_error: throw Error(message);
    case sparsa_cli_cuda_out_of_memory: throw std::bad_alloc();
    default: throw std::runtime_error("CUDA engine module: " + message);
    }
}

} // namespace

void load() { api(); }

int kernel_count() { return api().kernel_count(); }

bool device_available(std::string* why) {
    int32_t available = 0;
    const char* reason = nullptr;
    check(api().device_available(&available, &reason));
    if (available == 0 && why != nullptr) *why = reason != nullptr ? reason : "";
    return available != 0;
}

std::string device_name() {
    const char* name = nullptr;
    check(api().device_name(&name));
    return name != nullptr ? name : "";
}

Tensor round_to(const Tensor& x, CudaDtype dtype) {
    Tensor out;
    check(api().round_to(&x, dtype, &out));
    return out;
}

Attention::Attention() { check(api().engine_new(&engine_)); }

Attention::~Attention() {
    if (engine_ != nullptr) api().engine_free(engine_);
}

void Attention::prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                        const CudaAttentionOptions& options) {
    check(api().engine_prepare(engine_, &q, &k, &v, &masks, layer, &options));
}

std::vector<float> Attention::time_runs(int warmup, int runs) {
    std::vector<float> ms(static_cast<size_t>(runs));
    check(api().engine_time_runs(engine_, warmup, runs, ms.data()));
    return ms;
}

AttentionOutput Attention::download() {
    AttentionOutput out;
    check(api().engine_download(engine_, &out));
    return out;
}

int Attention::kernel() const { return api().engine_kernel(engine_); }

Layer::Layer() { check(api().layer_new(&layer_)); }

Layer::~Layer() {
    if (layer_ != nullptr) api().layer_free(layer_);
}

void Layer::prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                    const ContentArrays* arrays, const CudaAttentionOptions& options) {
    check(api().layer_prepare(layer_, &q, &k, &v, &masks, layer, arrays, &options));
}

std::vector<float> Layer::time_runs(int warmup, int runs) {
    std::vector<float> ms(static_cast<size_t>(runs));
    check(api().layer_time_runs(layer_, warmup, runs, ms.data()));
    return ms;
}

AttentionOutput Layer::download() {
    AttentionOutput out;
    check(api().layer_download(layer_, &out));
    return out;
}

CudaContentTimes Layer::times() {
    CudaContentTimes out;
    check(api().layer_times(layer_, &out));
    return out;
}

ContentBuckets Layer::buckets() {
    ContentBuckets out;
    check(api().layer_buckets(layer_, &out));
    return out;
}

} // namespace sparsa::cli::cuda
