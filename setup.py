"""Build for fastrnn: `pip install --no-build-isolation -e .`

The Python package needs no compilation. The C++/CUDA extension fastrnn._C (csrc/) is
built alongside it when torch is importable at build time:
  - a CUDAExtension (CPU + CUDA kernels) where torch has CUDA and nvcc is found,
  - a CppExtension (CPU kernels) otherwise.
Environment:
  FASTRNN_SKIP_EXT=1    build no extension (the package works without it)
  FASTRNN_USE_CUDA=0/1  force the CPU-only or the CUDA build
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value not in ("0", "false", "False", "no")


def _sources(pattern):
    return sorted(glob.glob(os.path.join(CSRC, pattern)))


def extension_modules():
    """The fastrnn._C extension for this machine, or [] when it is skipped."""
    if _env_flag("FASTRNN_SKIP_EXT"):
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("fastrnn: torch is not importable at build time; building without fastrnn._C")
        return [], {}
    use_cuda = _env_flag("FASTRNN_USE_CUDA")
    if use_cuda is None:
        use_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if use_cuda and torch.version.cuda is None:
        raise RuntimeError("fastrnn: FASTRNN_USE_CUDA=1 but this torch has no CUDA support")
    include_dirs = [os.path.join(ROOT, CSRC, "include"), os.path.join(ROOT, CSRC)]
    # -g0: no debug info, which halves the compile time on small CI machines.
    # -fopenmp: the kernels' thread teams and at::parallel_for run on torch's OpenMP pool (the
    # extension links the libgomp that torch loaded), and `omp simd` loops vectorise;
    # -fno-trapping-math lets the compiler turn the gate math's selects into vector blends.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-trapping-math"]
    sources = _sources("*.cpp")
    if use_cuda:
        sources += _sources("cuda/*.cu") + _sources("kernels/*.cu")
        # A100 and H100/H200 unless the builder says otherwise (torch reads this variable
        # and adds the -gencode flags; without it, it would build for every known arch).
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            "fastrnn._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("fastrnn._C", sources, include_dirs=include_dirs,
                                         extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=["-fopenmp"])
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = extension_modules()

setup(
    name="fastrnn",
    version="0.1.0",
    description="Fused LSTM/GRU and sampling kernels for PyTorch (Triton, C++/CUDA)",
    packages=find_packages(include=["fastrnn", "fastrnn.*"]),
    python_requires=">=3.9",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch is deliberately not listed: pip would otherwise pull multi-GB CUDA wheels on a
    # CPU machine. `make install` installs the right torch first.
)
