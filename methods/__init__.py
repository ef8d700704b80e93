"""Alignment methods, one file each. They register through the `bench.methods` entry-point group."""
