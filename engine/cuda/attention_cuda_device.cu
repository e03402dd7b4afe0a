// CudaLayerMasks: the forward and backward engines' kernels on the caller's tensors and stream
// (attention_cuda_device.hpp). The masks and the forward's work plan are uploaded once per
// (batch, d, dtype, scale) and reused; the launches are those of CudaAttention::run and
// CudaAttentionBackward::run with the caller's pointers in place of the engines' own buffers
// (CudaLayerMasks::forward is defined in attention_cuda.cu, ::backward in attention_cuda_backward.cu).
#include "engine/cuda/attention_cuda_device.hpp"

#include "engine/cuda/layer_masks_impl.hpp"

#include <cmath>
#include <set>
#include <string>

namespace sparsa {

CudaLayerMasks::CudaLayerMasks(const MaskSet& masks, int64_t layer) : impl_(std::make_unique<Impl>()) {
    if (layer < 0 || layer >= masks.layers) {
        throw Error("CudaLayerMasks: layer " + std::to_string(layer) + " is out of range (the set has " +
                    std::to_string(masks.layers) + " layers)");
    }
    if (!masks.content.empty()) {
        for (int64_t h = 0; h < masks.heads; ++h) {
            if (masks.content[static_cast<size_t>(layer * masks.heads + h)] != nullptr) {
                throw Error("CudaLayerMasks: head " + std::to_string(h) + " of layer " + std::to_string(layer) +
                            " is content-based (lsh, anchors, favor): its pairs depend on Q and K, and this path runs "
                            "fixed masks only (use the CPU engine, or engine/cuda/content/content_cuda.hpp)");
            }
        }
    }
    impl_->masks = masks;
    impl_->layer = layer;
}

CudaLayerMasks::~CudaLayerMasks() = default;

int64_t CudaLayerMasks::n() const { return impl_->masks.n; }
int64_t CudaLayerMasks::heads() const { return impl_->masks.heads; }
int32_t CudaLayerMasks::block() const { return impl_->masks.block; }

int64_t CudaLayerMasks::entries() const {
    std::set<const BlockMask*> distinct;
    int64_t total = 0;
    for (int64_t h = 0; h < impl_->masks.heads; ++h) {
        const BlockMask& m = impl_->masks.at(impl_->layer, h);
        if (distinct.insert(&m).second) total += m.kept_blocks();
    }
    return total;
}

} // namespace sparsa
