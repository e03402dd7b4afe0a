"""The built module itself (python/CMakeLists.txt): what _sparsa exports to the process."""
import shutil
import subprocess
import sys

import pytest

import sparsa


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("nm") is None, reason="needs Linux and binutils' nm")
def test_module_exports_only_its_init():
    """No symbol of the static libraries linked in (the engine, the DSL, Boost, CUB, the CUDA runtime)
    is exported: exported, they are shared with the other modules of the process (PyTorch's CUB among
    them) and the first definition loaded wins, which crashed `import sparsa` beside torch."""
    path = sparsa._sparsa.__file__
    out = subprocess.run(["nm", "-D", "--defined-only", "-C", path], check=True, capture_output=True, text=True).stdout
    names = [line.split(maxsplit=2)[2] for line in out.splitlines() if len(line.split(maxsplit=2)) == 3]
    assert "PyInit__sparsa" in names
    prefixes = ("guard variable for ", "typeinfo for ", "typeinfo name for ", "vtable for ")
    bare = [next((n[len(p):] for p in prefixes if n.startswith(p)), n) for n in names]
    # (std:: templates instantiated by the module's own code, on its types or not, may stay: weak, harmless)
    leaked = [n for n in bare if n.startswith(("sparsa::", "cub::", "boost::", "nlohmann::", "Eigen::", "cuda", "__cuda", "nvtx3::"))]
    assert not leaked, f"{len(leaked)} library symbols exported by {path}, e.g. {leaked[:5]}"
