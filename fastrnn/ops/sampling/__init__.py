"""Sampling: reference.py (sort-based oracle), vectorized.py (sort-free PyTorch, the CPU path),
triton.py (fused sort-free kernel), op.py (checks, dispatch and the public functions)."""
