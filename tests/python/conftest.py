"""pytest setup for the bindings' tests: `import sparsa` must come from the build (PYTHONPATH),
and a few shared helpers. ctest runs these with PYTHONPATH=<build>/python (tests/CMakeLists.txt)."""
import os
import pathlib

import numpy as np
import pytest

import sparsa

SOURCE_DIR = pathlib.Path(os.environ.get("SPARSA_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
PATTERNS = SOURCE_DIR / "examples" / "patterns"


def cuda_skip_reason():
    """Why sparsa.torch's GPU path cannot be tested here (None where it can): no torch, no CUDA
    device, a build without the CUDA engine, or an engine that cannot run."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed for this Python"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    if not sparsa.cuda_built:
        return "this sparsa was built without the CUDA engine (configure with nvcc present)"
    ok, why = sparsa.cuda_available()
    return None if ok else f"the CUDA engine cannot run here: {why}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, shape, dtype=np.float32):
    """Standard normal values: never zeros, so a wrong result cannot hide."""
    return rng.standard_normal(shape).astype(dtype)


def reach_brute_force(masks, layers):
    """R_l = (I | A_l) R_{l-1} as dense boolean products, A_l the OR of layer l's heads; [layers, n, n]."""
    n = masks.n
    eye = np.eye(n, dtype=bool)
    r = eye.copy()
    out = []
    for l in range(layers):
        layer = min(l, masks.layers - 1)
        a = np.zeros((n, n), bool)
        for h in range(masks.heads):
            a |= masks.to_dense(layer, h)
        m = (a | eye).astype(np.int32)
        r = (m @ r.astype(np.int32)) > 0
        out.append(r.copy())
    return np.stack(out)
