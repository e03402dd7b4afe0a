// CUDA engine benchmark: times sparsa's attention kernels by number (attn_fwd_kernel<N>) with
// CUDA events on masks read from .npz files, median of many runs, random inputs (never zeros).
// Prints a Markdown table; --csv also writes one line per case for bench/gpu_compare.py.
//
//   bench_cuda MASK.npz... [--kernels 1,2,3,4,0] [--heads 16] [--batch 1] [--d 128] [--dtype bf16]
//              [--runs 20] [--budget-ms 1500] [--kernel1-max-tflop 2] [--csv PATH]
//
// Kernel 0 is the engine's own choice (CudaAttentionOptions::kernel = 0), shown as the kernel it
// picked with "(auto)". A set of one head is repeated to --heads heads; FLOPs count allowed pairs only:
// 4 * pairs * d (S = Q K^T and O += P V). Each case runs one untimed warm-up, then at least 3
// and at most --runs timed runs, fewer when a run is long (--budget-ms per case).
//
// --bwd-kernels 2,0 also times the backward (CudaAttentionBackward: D = rowsum(dO * O), the dK / dV
// pass and the dQ pass, from the forward's O and lse of the engine's own forward) by kernel
// number, rows "bwd N"; its FLOPs are counted as 2.5 x the forward's (5 products of the
// forward's size against 2: FlashAttention's count), so rates compare with the forward's.
#include "engine/cuda/attention_cuda.hpp"
#include "engine/cuda/attention_cuda_backward.hpp"
#include "engine/error.hpp"
#include "io/mask_io.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace sparsa;

namespace {

struct Options {
    std::vector<std::string> masks;
    std::vector<int> kernels = {1, 2, 3, 4};
    std::vector<int> bwd_kernels;   // backward kernels to time; empty: none
    int64_t heads = 16, batch = 1, d = 128;
    CudaDtype dtype = CudaDtype::bfloat16;
    int runs = 20;
    double budget_ms = 1500;
    double kernel1_max_tflop = 2;
    std::string csv;
};

[[noreturn]] void usage(const std::string& problem) {
    std::cerr << "bench_cuda: " << problem
              << "\nusage: bench_cuda MASK.npz... [--kernels 1,2,3,4] [--bwd-kernels 2,0] [--heads 16] [--batch 1] [--d 128]"
                 " [--dtype bf16|fp16|float32] [--runs 20] [--budget-ms 1500] [--kernel1-max-tflop 2] [--csv PATH]\n";
    std::exit(2);
}

Options options_parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(a + " needs a value");
            return argv[++i];
        };
        if (a == "--kernels" || a == "--bwd-kernels") {
            std::vector<int>& list_of = a == "--kernels" ? o.kernels : o.bwd_kernels;
            list_of.clear();
            std::stringstream list(value());
            for (std::string k; std::getline(list, k, ',');) list_of.push_back(std::stoi(k));
        } else if (a == "--heads") o.heads = std::stoll(value());
        else if (a == "--batch") o.batch = std::stoll(value());
        else if (a == "--d") o.d = std::stoll(value());
        else if (a == "--runs") o.runs = std::stoi(value());
        else if (a == "--budget-ms") o.budget_ms = std::stod(value());
        else if (a == "--kernel1-max-tflop") o.kernel1_max_tflop = std::stod(value());
        else if (a == "--csv") o.csv = value();
        else if (a == "--dtype") {
            const std::string t = value();
            if (t == "bf16") o.dtype = CudaDtype::bfloat16;
            else if (t == "fp16") o.dtype = CudaDtype::float16;
            else if (t == "float32") o.dtype = CudaDtype::float32;
            else usage("unknown dtype " + t);
        } else if (a.rfind("--", 0) == 0) usage("unknown option " + a);
        else o.masks.push_back(a);
    }
    if (o.masks.empty()) usage("no mask files given");
    return o;
}

// The set with `heads` heads: a one-head set repeated, else as it is.
MaskSet heads_of(const MaskSet& set, int64_t heads) {
    if (set.heads != 1 || heads == 1) return set;
    std::vector<std::shared_ptr<const BlockMask>> ptrs(static_cast<size_t>(heads), set.masks[0]);
    MaskSet out = mask_set_make(1, heads, ptrs);
    return out;
}

double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

} // namespace

int main(int argc, char** argv) try {
    const Options opt = options_parse(argc, argv);
    std::string why;
    if (!cuda_device_available(&why)) {
        std::cerr << "bench_cuda: no GPU (" << why << ")\n";
        return 1;
    }
    const std::string gpu = cuda_device_name();
    std::ofstream csv;
    if (!opt.csv.empty()) {
        csv.open(opt.csv);
        csv << "mask,n,block,heads,d,batch,dtype,pairs,kernel,median_ms,runs,tflops,chosen_by\n";
    }
    std::printf("GPU: %s, %s, d = %lld, batch %lld\n\n", gpu.c_str(), cuda_dtype_name(opt.dtype),
                static_cast<long long>(opt.d), static_cast<long long>(opt.batch));
    std::printf("| mask | n | B | heads | density | kernel | median ms | runs | TFLOP/s |\n|---|---|---|---|---|---|---|---|---|\n");

    CudaAttention cuda;
    CudaAttentionBackward backward;
    Tensor q, k, v, d_o;
    for (const std::string& path : opt.masks) {
        const MaskSet masks = heads_of(mask_set_load(path), opt.heads);
        const TensorShape shape{opt.batch, masks.heads, masks.n, opt.d};
        if (!(q.shape == shape)) {   // fresh random inputs per shape (standard normal, never zeros)
            q = tensor_random(shape, 1);
            k = tensor_random(shape, 2);
            v = tensor_random(shape, 3);
        }
        double pairs = 0;
        for (int64_t h = 0; h < masks.heads; ++h) pairs += static_cast<double>(block_mask_stats(masks.at(0, h)).kept_pairs);
        pairs *= static_cast<double>(opt.batch);
        const double flop = 4.0 * pairs * static_cast<double>(opt.d);
        const double density = pairs / (static_cast<double>(opt.batch * masks.heads) * masks.n * masks.n);
        const std::string name = std::filesystem::path(path).stem().string();
        // Times one prepared kernel (one warm-up and one timed run size the rest: at least 3, at most
        // --runs, within --budget-ms), prints its row and its CSV line. kernel: "15" or "bwd5";
        // flop_factor: 1 for the forward, 2.5 for the backward.
        const auto time_case = [&](const std::string& kernel, bool automatic, double flop_factor, auto&& time_runs) {
            const float first = time_runs(1, 1)[0];
            const int runs = std::clamp(static_cast<int>(opt.budget_ms / std::max(first, 1e-3f)), 3, opt.runs);
            const double ms = median(time_runs(0, runs));
            const double tflops = flop_factor * flop / (ms * 1e-3) / 1e12;
            const std::string shown = (kernel.rfind("bwd", 0) == 0 ? "bwd " + kernel.substr(3) : kernel) + (automatic ? " (auto)" : "");
            std::printf("| %s | %lld | %d | %lld | %.4f | %s | %.3f | %d | %.1f |\n", name.c_str(),
                        static_cast<long long>(masks.n), masks.block, static_cast<long long>(masks.heads), density,
                        shown.c_str(), ms, runs, tflops);
            std::fflush(stdout);
            if (csv) {
                csv << name << ',' << masks.n << ',' << masks.block << ',' << masks.heads << ',' << opt.d << ',' << opt.batch
                    << ',' << cuda_dtype_name(opt.dtype) << ',' << static_cast<long long>(pairs) << ',' << kernel << ',' << ms
                    << ',' << runs << ',' << tflops << ',' << (automatic ? "auto" : "") << '\n';
            }
        };
        for (int kernel : opt.kernels) {
            if (kernel != 0 && !cuda_kernel_supports(kernel, opt.dtype, opt.d, masks.block)) continue;
            if (kernel == 1 && flop > opt.kernel1_max_tflop * 1e12) {
                std::printf("| %s | %lld | %d | %lld | %.4f | 1 | skipped (over --kernel1-max-tflop) | | |\n", name.c_str(),
                            static_cast<long long>(masks.n), masks.block, static_cast<long long>(masks.heads), density);
                continue;
            }
            CudaAttentionOptions options;
            options.dtype = opt.dtype;
            options.kernel = kernel;
            options.poison_outputs = false;
            cuda.prepare(q, k, v, masks, 0, options);
            time_case(std::to_string(cuda.kernel()), kernel == 0, 1.0, [&](int w, int r) { return cuda.time_runs(w, r); });
        }
        if (opt.bwd_kernels.empty()) continue;
        // the backward from the engine's own forward (kernel 0) on the same inputs
        CudaAttentionOptions fo;
        fo.dtype = opt.dtype;
        const AttentionOutput fwd = cuda.forward(q, k, v, masks, 0, fo);
        if (!(d_o.shape == shape)) d_o = tensor_random(shape, 4);
        for (int kernel : opt.bwd_kernels) {
            if (kernel != 0 && !cuda_backward_kernel_supports(kernel, opt.dtype, opt.d, masks.block)) continue;
            if (kernel == 1 && flop > opt.kernel1_max_tflop * 1e12) continue;
            CudaBackwardOptions options;
            options.dtype = opt.dtype;
            options.kernel = kernel;
            options.poison_outputs = false;
            options.check_lse = false;
            backward.prepare(q, k, v, fwd.o, fwd.lse, d_o, masks, 0, options);
            time_case("bwd" + std::to_string(backward.kernel()), kernel == 0, 2.5,
                      [&](int w, int r) { return backward.time_runs(w, r); });
        }
    }
    return 0;
} catch (const Error& e) {
    std::cerr << "bench_cuda: " << e.what() << '\n';
    return 1;
}
