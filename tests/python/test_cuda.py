"""The CUDA engine from Python: where it is built and a GPU is present, against the CPU engine on
the same (rounded) inputs; otherwise attention_cuda raises an error that says why."""
import numpy as np
import pytest

import sparsa
from conftest import randn


def test_without_the_cuda_engine_the_error_says_so():
    if sparsa.cuda_built:
        pytest.skip("this build has the CUDA engine")
    ok, why = sparsa.cuda_available()
    assert not ok and "without the CUDA engine" in why
    with pytest.raises(RuntimeError, match="built without the CUDA engine"):
        sparsa.attention_cuda(None, None, None, None)


def test_without_a_gpu_the_error_says_so(rng):
    if not sparsa.cuda_built:
        pytest.skip("this build has no CUDA engine")
    ok, why = sparsa.cuda_available()
    if ok:
        pytest.skip("a GPU is present")
    masks = sparsa.compile("attend = window(8)", n=64, block=64)
    q = randn(rng, (1, 1, 64, 64))
    with pytest.raises(ValueError, match="no usable GPU"):
        sparsa.attention_cuda(q, q, q, masks)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bf16", 2e-2), ("fp16", 2e-3)])
def test_cuda_matches_the_cpu_engine(rng, dtype, tolerance):
    if not sparsa.cuda_built or not sparsa.cuda_available()[0]:
        pytest.skip("needs the CUDA engine and a GPU: " + sparsa.cuda_available()[1])
    masks = sparsa.compile("heads 2\nattend = window(100) | global(first(64)) | random(2, seed = 1)", n=1000, block=64)
    q, k, v = (sparsa.round_to(randn(rng, (2, 2, 1000, 64)), dtype) for _ in range(3))
    o, lse = sparsa.attention_cuda(q, k, v, masks, dtype=dtype)
    o_cpu, lse_cpu = sparsa.attention(q, k, v, masks)
    assert o.shape == o_cpu.shape and lse.shape == lse_cpu.shape
    assert np.abs(o - o_cpu).max() <= tolerance * np.abs(o_cpu).max()
    assert np.abs(lse - lse_cpu).max() <= 1e-3 * max(1.0, np.abs(lse_cpu).max())
