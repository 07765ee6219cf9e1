"""Elman RNN layer: reference.py (plain PyTorch), triton.py (fused kernels), ext.py
(C++/CUDA), op.py (custom ops)."""
