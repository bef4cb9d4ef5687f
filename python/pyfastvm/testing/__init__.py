"""Support for pyfastvm's own tests and benchmarks."""
