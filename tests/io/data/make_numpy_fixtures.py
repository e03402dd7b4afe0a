"""Writes the numpy-made fixtures that test_mask_io.cpp reads (run from this folder with
/usr/bin/python3 make_numpy_fixtures.py): numpy_arrays.npz (np.savez, stored) holding one array
of each dtype sparsa reads plus arrays it must refuse, and numpy_compressed.npz (np.savez_compressed)."""
import numpy as np

arrays = {
    "bool": np.array([True, False, True]),
    "uint8": np.arange(5, dtype=np.uint8),
    "int32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
    "int64": np.array([-(2**40), 7], dtype=np.int64),
    "uint64": np.array([2**63 + 5, 1], dtype=np.uint64),
    "float16": np.array([1.5, -2.0, 65504.0], dtype=np.float16),
    "float32": np.array([[0.25, -1e-3]], dtype=np.float32),
    "float64": np.array(2.5),  # a 0-d array: shape ()
    "empty": np.zeros((0, 4), dtype=np.int32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "big_endian": np.arange(3, dtype=">i4"),
    "complex": np.array([1j], dtype=np.complex64),
}
np.savez("numpy_arrays.npz", **arrays)
np.savez_compressed("numpy_compressed.npz", a=np.arange(100, dtype=np.int32))
