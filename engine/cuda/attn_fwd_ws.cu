// Kernels 17 to 19 (attn_fwd_ws.cuh) compiled for sm_90a alone, as attn_fwd_wgmma.cu compiles 10 to
// 16 (and in a translation unit of its own, so that the two compile side by side): the launch
// functions attention_cuda.cu calls, for every dtype, head dim and mask block they run.
#include "engine/cuda/attn_fwd_wgmma.cuh"
#include "engine/cuda/attn_fwd_ws.cuh"

namespace sparsa::cuda {

#define SPARSA_WS_INSTANCES(T, D, Kernel)                                                                    \
    template cudaError_t attn_fwd_ws_launch<T, D, 64, Kernel>(const AttnParams<T>&, int64_t, int64_t, int64_t);  \
    template cudaError_t attn_fwd_ws_launch<T, D, 128, Kernel>(const AttnParams<T>&, int64_t, int64_t, int64_t); \
    template cudaError_t attn_fwd_ws_launch<T, D, 256, Kernel>(const AttnParams<T>&, int64_t, int64_t, int64_t);
#define SPARSA_WS_KERNEL(Kernel)                       \
    SPARSA_WS_INSTANCES(__nv_bfloat16, 64, Kernel)     \
    SPARSA_WS_INSTANCES(__nv_bfloat16, 128, Kernel)    \
    SPARSA_WS_INSTANCES(__half, 64, Kernel)            \
    SPARSA_WS_INSTANCES(__half, 128, Kernel)
SPARSA_WS_KERNEL(17)
SPARSA_WS_KERNEL(18)
SPARSA_WS_KERNEL(19)
#undef SPARSA_WS_KERNEL
#undef SPARSA_WS_INSTANCES

} // namespace sparsa::cuda
