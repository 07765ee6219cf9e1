"""Build for fastrnn: `pip install --no-build-isolation -e .`

The Python package needs no compilation; the C++/CUDA extension fastrnn._C is built
when its sources are present (see csrc/), and the package works without it.
"""
from setuptools import find_packages, setup

setup(
    name="fastrnn",
    version="0.1.0",
    description="Fused LSTM/GRU and sampling kernels for PyTorch (Triton, C++/CUDA)",
    packages=find_packages(include=["fastrnn", "fastrnn.*"]),
    python_requires=">=3.9",
    # torch is deliberately not listed: pip would otherwise pull multi-GB CUDA wheels on a
    # CPU machine. `make install` installs the right torch first.
)
