"""Softmax / log-softmax with temperature: reference.py (PyTorch), triton.py (kernels), op.py
(custom ops and the public functions)."""
