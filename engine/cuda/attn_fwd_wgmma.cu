// Kernels 10 to 18 (attn_fwd_wgmma.cuh, attn_fwd_ws.cuh) compiled for sm_90a alone, in their own translation
// unit: wgmma exists only on that target (engine/cuda/CMakeLists.txt builds this file with
// -gencode=arch=compute_90a,code=sm_90a), and attention_cuda.cu calls them through the launch
// functions instantiated here for every dtype, head dim and mask block they run.
#include "engine/cuda/attn_fwd_wgmma.cuh"
#include "engine/cuda/attn_fwd_ws.cuh"

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

#define SPARSA_WS_INSTANCES(T, D, KeyTiles)                                                                    \
    template cudaError_t attn_fwd_ws_launch<T, D, 64, KeyTiles>(const AttnParams<T>&, int64_t, int64_t);  \
    template cudaError_t attn_fwd_ws_launch<T, D, 128, KeyTiles>(const AttnParams<T>&, int64_t, int64_t); \
    template cudaError_t attn_fwd_ws_launch<T, D, 256, KeyTiles>(const AttnParams<T>&, int64_t, int64_t);
SPARSA_WS_INSTANCES(__nv_bfloat16, 64, 1)
SPARSA_WS_INSTANCES(__nv_bfloat16, 128, 1)
SPARSA_WS_INSTANCES(__half, 64, 1)
SPARSA_WS_INSTANCES(__half, 128, 1)
SPARSA_WS_INSTANCES(__nv_bfloat16, 64, 2)
SPARSA_WS_INSTANCES(__nv_bfloat16, 128, 2)
SPARSA_WS_INSTANCES(__half, 64, 2)
SPARSA_WS_INSTANCES(__half, 128, 2)
#undef SPARSA_WS_INSTANCES

} // namespace sparsa::cuda
