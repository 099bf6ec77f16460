"""Triton chunkwise OSDN kernel (set TRITON_INTERPRET=1 before importing to run it on CPU)."""
