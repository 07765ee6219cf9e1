"""GRU layer: reference.py (plain PyTorch), triton.py (fused kernels), op.py (custom ops)."""
