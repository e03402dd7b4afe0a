// Kernels 17 and 18 (attn_fwd_ws.cuh) compiled for sm_90a alone, as attn_fwd_wgmma.cu compiles 10 to
// 16 (and in a translation unit of its own, so that the two compile side by side): the launch
// functions attention_cuda.cu calls, for every dtype, head dim and mask block they run.
#include "engine/cuda/attn_fwd_wgmma.cuh"
#include "engine/cuda/attn_fwd_ws.cuh"

namespace sparsa::cuda {

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
