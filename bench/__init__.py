"""End-to-end and in-process benchmarks (not shipped with the package)."""
