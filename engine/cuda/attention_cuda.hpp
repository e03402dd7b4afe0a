// The CUDA engine: block-sparse attention forward on the GPU, the same call shape as the CPU
// engine (engine/cpu_attention.hpp). Plain C++: no CUDA header is needed to use it.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa {

// The element type Q, K, V and O have on the GPU (lse is always float32).
enum class CudaDtype { float32, bfloat16, float16 };
const char* cuda_dtype_name(CudaDtype dtype);   // "float32", "bf16", "fp16"

struct CudaAttentionOptions {
    float scale = 0;                      // softmax scale, any finite value; 0: 1 / sqrt(d)
    CudaDtype dtype = CudaDtype::bfloat16;
    int kernel = 0;                       // attn_fwd_kernel<N> (1..cuda_kernel_count()); 0: cuda_auto_kernel's choice
    bool poison_outputs = true;           // fill O and lse with NaN before the run (tests catch unwritten elements)
    int64_t split_steps = 0;              // kernels 7 to 19: rows of more key tiles than this are cut into chunks of
                                          // at most this many; 0: max(64, all steps / (8 * multiprocessors))
    int64_t persistent_blocks = 0;        // kernels 13 and 19: the most thread blocks they run (each takes work
                                          // items until none is left); 0: as many as fit on the GPU at once
};

// Whether a CUDA GPU can run the engine here; when not, `why` says why (no driver, no device).
bool cuda_device_available(std::string* why = nullptr);
// "NVIDIA H100 80GB HBM3" (device 0). Throws sparsa::Error when there is no GPU.
std::string cuda_device_name();

// The kernel versions: 1 (simple: any d <= 256, any block, every dtype), 2 to 19 (tensor
// cores: bf16 / fp16, d = 64 or 128, mask blocks 64, 128 or 256; 10 to 19 use Hopper's wgmma
// and run only on a GPU of compute capability 9.0). attn_fwd_kernels.cuh says what each adds.
int cuda_kernel_count();
bool cuda_kernel_supports(int kernel, CudaDtype dtype, int64_t d, int32_t block);
// Whether device 0 runs sm_90a machine code (compute capability 9.0: H100, H200), which kernels
// 10 to 19 need; false without a GPU.
bool cuda_device_has_wgmma();
// Kernel 0's choice for a call (no GPU needed; `wgmma`: whether the GPU runs kernels 10 to 19,
// cuda_device_has_wgmma() for this one): 1 where no tensor-core kernel runs the dtype, d and block;
// with wgmma 15, 18 or 19 from the lengths of the mask's 128-row tiles (at d = 128 with blocks of
// 64, where the three were timed against one another; else 15); without, 7 or 9, whichever the
// step counts predict faster. attention_cuda.cu says from which measurements.
int cuda_auto_kernel(const MaskSet& masks, int64_t layer, CudaDtype dtype, int64_t d, bool wgmma);

// The checks CudaAttention::prepare makes before anything reaches the GPU, callable without
// one: what attention_forward checks of the call (shapes, layer, masks, a finite scale, finite
// Q, K, V), every element within the dtype's range (fp16: |x| up to 65504; bf16: up to 3.39e38,
// just under float32's 3.40e38; an element that would round to inf is named with its index,
// value and the fix), and scores in the kernel's range (attention_check_score_range: kernel 1
// up to FLT_MAX / 4, the tensor-core kernels 2 to 19, which kernel 0 picks for bf16 and fp16
// at d = 64 or 128, up to 2^29; reference.hpp says why). O(size) on the host. Throws sparsa::Error.
void cuda_attention_check(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                          const CudaAttentionOptions& options = {});

// Rounds every element to `dtype` and back (what the GPU sees of a float32 tensor), so the CPU
// engine can be run on the same inputs. x: any shape.
Tensor tensor_round_to(const Tensor& x, CudaDtype dtype);

// One GPU's attention: device buffers are kept and reused across calls (grown when needed).
class CudaAttention {
public:
    CudaAttention();   // throws sparsa::Error when no GPU is usable
    ~CudaAttention();
    CudaAttention(const CudaAttention&) = delete;
    CudaAttention& operator=(const CudaAttention&) = delete;

    // Attention with one BlockMask per head, from layer `layer` of `masks` (head h uses mask
    // (layer, h)); q, k, v rounded to options.dtype. Rows with no allowed key give o = 0 and
    // lse = -inf. q, k, v: [batch, heads, n, d]; returns o [batch, heads, n, d] and lse
    // [batch, heads, n, 1], in float32. Throws sparsa::Error for what cuda_attention_check
    // refuses, a kernel that does not run this dtype / d / block (saying which does), an O whose
    // sums of P V overflowed float32 (V near float32's limit), or a failed CUDA call.
    AttentionOutput forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                            const CudaAttentionOptions& options = {});

    // The same in three steps, for timing: prepare checks (cuda_attention_check) and uploads the
    // inputs and masks, run launches the kernel (asynchronously), download waits, copies o and
    // lse back and checks that O is finite.
    void prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                 const CudaAttentionOptions& options = {});
    void run();
    AttentionOutput download();

    // Times `runs` launches of the prepared call with CUDA events after `warmup` untimed ones:
    // milliseconds of each run.
    std::vector<float> time_runs(int warmup, int runs);

    // The kernel the prepared call runs (options.kernel, or the one chosen for 0).
    int kernel() const;

private:
    friend class CudaLayerMasks;   // attention_cuda_device.hpp: the same kernels on the caller's tensors
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

class CudaLayerMasks;

} // namespace sparsa
