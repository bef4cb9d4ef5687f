"""Test infrastructure that ships with pyfastvm: the hardware-KVM lane
(:mod:`pyfastvm.testing.hwkvm`)."""
