"""The machine builder: the init steps that turn a VMConfig into a PC-like
micro-VM ready to boot Linux, in kvmtool's levels: core (the VM), base
(interrupt controllers, timer, and the host's exit assists where it needs
them), dev (devices, each registered with an id), firmware (the ACPI tables
and kernel arguments, described from the registered devices), late (kernel
and vCPUs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._core import Vcpu, Vm
from .acpi import AcpiPlatform, AcpiTables, build_acpi_tables
from .boot import BootPlan, load_kernel
from .boot.cmdline import kernel_cmdline
from .boot.layout import ACPI_TABLES_ADDR
from .config import VMConfig
from .description import describe
from .devices import I8042, PmTimer, PowerControl, Serial, VirtioBlk, VirtioRng, VirtioVsock
from .host import HostProfile, host_profile
from .init_chain import InitChain, InitChainError
from .x86.cpuid import vcpu_cpuid
from .x86.interrupts import pc_gsi_routes
from .x86.lapic import wire_local_interrupts
from .x86.long_mode import enter_long_mode
from .x86.msrs import boot_msrs

COM1_PORT, COM1_IRQ = 0x3F8, 4
I8042_PORT, I8042_PORTS = 0x60, 5  # data 0x60, command/status 0x64
POWER_CONTROL_PORT = 0x600  # ACPI sleep control, sleep status, reset
PM_TIMER_PORT = 0x608
BOOT_STACK = 0x8FF0  # below the page tables; Linux switches stacks at once
X87_CONTROL_DEFAULT = 0x37F  # FNINIT's control word (SDM vol. 1, 8.1.5)
MXCSR_DEFAULT = 0x1F80  # all SIMD exceptions masked (SDM vol. 1, 10.2.3.1)


@dataclass
class BuildContext:
    """What the init steps build, step by step."""

    config: VMConfig
    # Appended to the initrd as another cpio archive (pyfastvm.run's runner).
    initrd_overlay: bytes = b""
    # Boot a bzImage as the vmlinux inside it, decompressed on the host.
    decompress_kernel: bool = True
    profile: HostProfile = field(default_factory=host_profile)
    created_vm: Vm | None = None
    serial: Serial | None = None
    # The virtio devices of VMConfig.disks, .vsock and .rng, in that order.
    virtio: list[VirtioBlk | VirtioVsock | VirtioRng] = field(default_factory=list)
    acpi: AcpiTables | None = None
    # What the registered devices ask of the kernel command line.
    device_kernel_args: list[str] = field(default_factory=list)
    # The command line the kernel was loaded with.
    cmdline: str = ""
    plan: BootPlan | None = None
    vcpus: list[Vcpu] = field(default_factory=list)

    @property
    def vm(self) -> Vm:
        """The VM, once the "vm" step has created it."""
        if self.created_vm is None:
            raise InitChainError("the 'vm' init step has not run: steps need the VM it creates")
        return self.created_vm


def create_vm(ctx: BuildContext) -> None:
    # Ports nobody claims read as 0xff, as on a PC, so probes find nothing.
    # RAM on a memfd, so the guest can become a template (MicroVM.freeze).
    ctx.created_vm = Vm(ctx.config.memory_bytes, ignore_unclaimed=True, shared_memory=True)


def drop_vm(ctx: BuildContext) -> None:
    ctx.created_vm = None


def enable_exit_assists(ctx: BuildContext) -> None:
    """The work this host's KVM leaves to user space, completed in the run
    loop (pyfastvm.host); before the guest first runs."""
    ctx.vm.enable_exit_assists(list(ctx.profile.exit_assists))


def create_irqchip(ctx: BuildContext) -> None:
    """KVM's PICs and I/O APIC, wired as on a PC (see x86.interrupts)."""
    ctx.vm.create_irqchip()
    ctx.vm.set_gsi_routing(pc_gsi_routes())


def add_serial(ctx: BuildContext) -> None:
    serial = Serial()
    ctx.vm.add_pio_device(COM1_PORT, Serial.PORTS, serial, id="com1", gsi=COM1_IRQ)
    ctx.serial = serial


def drop_serial(ctx: BuildContext) -> None:
    ctx.serial = None


def add_i8042(ctx: BuildContext) -> None:
    ctx.vm.add_pio_device(I8042_PORT, I8042_PORTS, I8042(), id="i8042")


def add_acpi_devices(ctx: BuildContext) -> None:
    """The PM timer and the sleep and reset registers the FADT points at."""
    ctx.vm.add_pio_device(PM_TIMER_PORT, PmTimer.PORTS, PmTimer(), id="pm-timer")
    ctx.vm.add_pio_device(
        POWER_CONTROL_PORT, PowerControl.PORTS, PowerControl(), id="power-control"
    )


def add_user_devices(ctx: BuildContext) -> None:
    for spec in ctx.config.devices:
        add = ctx.vm.add_pio_device if spec.bus == "pio" else ctx.vm.add_mmio_device
        add(spec.base, spec.length, spec.device, id=spec.id, gsi=spec.gsi)


def add_virtio_devices(ctx: BuildContext) -> None:
    """The configured disks (the guest's vda, vdb, ... in this order), vsock
    and entropy device, each in an MMIO window with an interrupt line of its
    own; the firmware step describes them in the DSDT."""
    config = ctx.config
    devices: list[VirtioBlk | VirtioVsock | VirtioRng] = [
        VirtioBlk(disk.path, read_only=disk.read_only) for disk in config.disks
    ]
    if config.vsock is not None:
        devices.append(VirtioVsock(config.vsock.cid, config.vsock.path))
    if config.rng:
        devices.append(VirtioRng())
    for device in devices:
        ctx.vm.add_mmio_device(None, device.WINDOW, device, gsi=ctx.vm.allocate_gsi())
        ctx.virtio.append(device)


def drop_virtio_devices(ctx: BuildContext) -> None:
    ctx.virtio.clear()


def describe_machine(ctx: BuildContext) -> None:
    """The ACPI tables (the vCPUs, and each registered device's terms) and
    the kernel arguments the devices ask for: built last, from the registry,
    as kvmtool builds its firmware tables from its device list."""
    devices = ctx.vm.devices
    descriptions = [describe(info) for info in devices]
    platform = AcpiPlatform(
        cpu_count=ctx.config.vcpus,
        devices=devices,
        dsdt_terms=b"".join(d.aml for d in descriptions),
    )
    ctx.acpi = build_acpi_tables(platform, ACPI_TABLES_ADDR)
    ctx.vm.memory.write(ctx.acpi.base, ctx.acpi.image)
    ctx.device_kernel_args = [arg for d in descriptions for arg in d.kernel_args]


def drop_description(ctx: BuildContext) -> None:
    ctx.acpi = None
    ctx.device_kernel_args = []


def initrd_image(ctx: BuildContext) -> bytes | None:
    """The user's initrd, then the overlay, each 4-byte aligned as the
    kernel's initramfs unpacker wants concatenated archives."""
    user = ctx.config.initrd.read_bytes() if ctx.config.initrd is not None else b""
    user += bytes(-len(user) % 4)
    image = user + ctx.initrd_overlay
    return image or None


def load_linux(ctx: BuildContext) -> None:
    assert ctx.config.kernel is not None, "VMConfig.kernel is required to boot"
    machine_args = [*ctx.device_kernel_args, *ctx.profile.kernel_args]
    ctx.cmdline = kernel_cmdline(ctx.config.cmdline, extra_args=machine_args)
    ctx.plan = load_kernel(
        ctx.config.kernel,
        memory_size=ctx.config.memory_bytes,
        cmdline=ctx.cmdline,
        initrd=initrd_image(ctx),
        decompress=ctx.decompress_kernel,
    )
    ctx.plan.write_to(ctx.vm.memory)


def create_vcpus(ctx: BuildContext) -> None:
    """Every vCPU gets its own CPUID, the boot MSRs and the LAPIC pins. The
    boot vCPU enters Linux; the others wait in KVM's local APIC for the
    INIT/SIPI with which the guest starts them."""
    supported = ctx.vm.kvm.supported_cpuid()
    count = ctx.config.vcpus
    for index in range(count):
        vcpu = ctx.vm.create_vcpu(index)
        hidden = ctx.profile.hidden_kvm_features
        vcpu.set_cpuid(
            vcpu_cpuid(supported, apic_id=index, vcpu_count=count, hidden_kvm_features=hidden)
        )
        vcpu.set_msrs(boot_msrs())
        wire_local_interrupts(vcpu)
        ctx.vcpus.append(vcpu)
    enter_linux(ctx)


def enter_linux(ctx: BuildContext) -> None:
    """The boot vCPU as the 64-bit boot protocol asks: long mode with the
    boot GDT, RSI = the zero page, interrupts off (Documentation/arch/x86/
    boot.rst, "64-bit Boot Protocol")."""
    assert ctx.plan is not None
    vcpu = ctx.vcpus[0]
    enter_long_mode(vcpu, ctx.vm.memory)
    fpu = vcpu.get_fpu()
    fpu.fcw, fpu.mxcsr = X87_CONTROL_DEFAULT, MXCSR_DEFAULT
    vcpu.set_fpu(fpu)
    regs = vcpu.get_regs()
    regs.rip, regs.rsi, regs.rsp = ctx.plan.entry_64, ctx.plan.zero_page_addr, BOOT_STACK
    vcpu.set_regs(regs)


def drop_vcpus(ctx: BuildContext) -> None:
    ctx.vcpus.clear()


def default_init_chain(profile: HostProfile | None = None) -> InitChain[BuildContext]:
    """The steps of a Linux micro-VM on a host of `profile` (this one's by
    default); add your own before starting it."""
    profile = profile if profile is not None else host_profile()
    chain: InitChain[BuildContext] = InitChain()
    chain.add("vm", "core", create_vm, drop_vm)
    if profile.exit_assists:
        chain.add("exit-assists", "base", enable_exit_assists)
    chain.add("irqchip", "base", create_irqchip)
    chain.add("pit", "base", lambda ctx: ctx.vm.create_pit())
    chain.add("serial", "dev", add_serial, drop_serial)
    chain.add("i8042", "dev", add_i8042)
    chain.add("acpi-devices", "dev", add_acpi_devices)
    chain.add("devices", "dev", add_user_devices)
    chain.add("virtio", "dev", add_virtio_devices, drop_virtio_devices)
    chain.add("acpi", "firmware", describe_machine, drop_description)
    chain.add("kernel", "late", load_linux)
    chain.add("vcpus", "late", create_vcpus, drop_vcpus)
    return chain
