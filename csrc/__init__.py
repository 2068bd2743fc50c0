"""C++ and CUDA sources of rlsignals, shipped as package data and compiled on first use."""
