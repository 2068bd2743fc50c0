"""Triton kernels of rlsignals, installed as ``rlsignals.triton_kernels``.

Each module holds the ``@triton.jit`` kernels of one op and a thin launcher
that takes torch tensors. Importing this package imports triton.
"""
