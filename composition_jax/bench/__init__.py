"""Benchmarks of the standard composition-sampling problem (see ``problem.py``), side by side
with NumPy, diffrax and PyTorch implementations of the same recursion. Entry point:
``composition-jax bench [--quick] [--out DIR]``."""
