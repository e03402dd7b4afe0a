// Kernels 10 to 16 (attn_fwd_wgmma.cuh) compiled for sm_90a alone, in their own translation unit:
// wgmma exists only on that target (engine/cuda/CMakeLists.txt builds this file with
// -gencode=arch=compute_90a,code=sm_90a), and attention_cuda.cu calls them through the launch
// functions instantiated here for every dtype, head dim and mask block they run. Kernels 17 to 19
// are attn_fwd_ws.cu's (a translation unit of their own, so the two compile side by side).
#include "engine/cuda/attn_fwd_wgmma.cuh"

namespace sparsa::cuda {

#define SPARSA_WGMMA_INSTANCES(T, D, K)                                                                        \
    template cudaError_t attn_fwd_wgmma_launch<T, D, 64, K>(const AttnParams<T>&, int64_t, int64_t, int64_t);  \
    template cudaError_t attn_fwd_wgmma_launch<T, D, 128, K>(const AttnParams<T>&, int64_t, int64_t, int64_t); \
    template cudaError_t attn_fwd_wgmma_launch<T, D, 256, K>(const AttnParams<T>&, int64_t, int64_t, int64_t);
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 10)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 10)
SPARSA_WGMMA_INSTANCES(__half, 64, 10)
SPARSA_WGMMA_INSTANCES(__half, 128, 10)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 11)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 11)
SPARSA_WGMMA_INSTANCES(__half, 64, 11)
SPARSA_WGMMA_INSTANCES(__half, 128, 11)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 12)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 12)
SPARSA_WGMMA_INSTANCES(__half, 64, 12)
SPARSA_WGMMA_INSTANCES(__half, 128, 12)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 13)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 13)
SPARSA_WGMMA_INSTANCES(__half, 64, 13)
SPARSA_WGMMA_INSTANCES(__half, 128, 13)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 14)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 14)
SPARSA_WGMMA_INSTANCES(__half, 64, 14)
SPARSA_WGMMA_INSTANCES(__half, 128, 14)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 15)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 15)
SPARSA_WGMMA_INSTANCES(__half, 64, 15)
SPARSA_WGMMA_INSTANCES(__half, 128, 15)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 64, 16)
SPARSA_WGMMA_INSTANCES(__nv_bfloat16, 128, 16)
SPARSA_WGMMA_INSTANCES(__half, 64, 16)
SPARSA_WGMMA_INSTANCES(__half, 128, 16)
#undef SPARSA_WGMMA_INSTANCES

} // namespace sparsa::cuda
