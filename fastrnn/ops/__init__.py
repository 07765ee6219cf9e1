"""Operators, one folder each: reference, kernels and torch.library glue side by side."""
