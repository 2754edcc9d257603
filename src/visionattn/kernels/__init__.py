"""Fused kernels for the layers whose pure-PyTorch form is slow; each is compiled on first use."""
