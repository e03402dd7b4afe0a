// Backward kernels 5 to 9 (attn_bwd_wgmma.cuh) compiled for sm_90a alone, in its own translation unit
// as the forward's wgmma kernels are (attn_fwd_wgmma.cu); attention_cuda_backward.cu calls it
// through the launch function instantiated here for every dtype, head dim and mask block.
#include "engine/cuda/attn_bwd_wgmma.cuh"

namespace sparsa::cuda {

#define SPARSA_BWD_WGMMA_INSTANCES(T, D)                                                      \
    template cudaError_t attn_bwd_wgmma_launch<T, D, 64>(const BwdParams<T>&, bool, int, cudaStream_t);  \
    template cudaError_t attn_bwd_wgmma_launch<T, D, 128>(const BwdParams<T>&, bool, int, cudaStream_t); \
    template cudaError_t attn_bwd_wgmma_launch<T, D, 256>(const BwdParams<T>&, bool, int, cudaStream_t);
SPARSA_BWD_WGMMA_INSTANCES(__nv_bfloat16, 64)
SPARSA_BWD_WGMMA_INSTANCES(__nv_bfloat16, 128)
SPARSA_BWD_WGMMA_INSTANCES(__half, 64)
SPARSA_BWD_WGMMA_INSTANCES(__half, 128)
#undef SPARSA_BWD_WGMMA_INSTANCES

} // namespace sparsa::cuda
