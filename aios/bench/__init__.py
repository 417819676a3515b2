"""Support code for benchmarks that must live in the package (set-up of peer systems, on request)."""
