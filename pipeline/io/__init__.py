"""Readers, the paired zarr store and the synthetic generator."""
