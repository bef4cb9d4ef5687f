"""How long tests wait for a minimal-kernel guest: long enough for a boot
on the slowest host we have (about 100 s on a 2-core AMD KVM-on-PVM host
beside the lane), so that only a hang reaches it."""

MINIMAL_BOOT_TIMEOUT = 600.0
