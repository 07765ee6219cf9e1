"""Sampling: reference.py (sort-based oracle), ext.py (the C++ sampler, the CPU path),
vectorized.py (sort-free PyTorch, the fallback), triton.py (fused sort-free kernel), op.py
(checks, dispatch and the public functions)."""
