"""Support for pyfastvm's own tests and benchmarks: the hardware-KVM lane
(:mod:`pyfastvm.testing.hwkvm`) and a tiny long-mode guest
(:mod:`pyfastvm.testing.tiny_kernel`)."""
