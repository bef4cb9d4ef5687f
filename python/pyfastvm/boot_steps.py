"""The built-in init steps that turn a VMConfig into a PC-like micro-VM ready
to boot Linux, in kvmtool's levels: core (the VM), base (interrupt
controllers, timer, and the host's exit assists where it needs them), dev
(devices and their ACPI description), late (kernel and vCPUs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._core import Vcpu, Vm
from .acpi import AcpiPlatform, AcpiTables, SerialPort, build_acpi_tables
from .boot import BootPlan, load_kernel
from .boot.cmdline import kernel_cmdline
from .boot.layout import ACPI_TABLES_ADDR
from .boot.long_mode import enter_long_mode
from .config import VMConfig
from .devices import I8042, PmTimer, PowerControl, Serial
from .host import HostProfile, host_profile
from .init_chain import InitChain
from .x86.cpuid import vcpu_cpuid
from .x86.interrupts import pc_gsi_routes
from .x86.lapic import wire_local_interrupts
from .x86.msrs import boot_msrs

COM1_PORT, COM1_IRQ = 0x3F8, 4
I8042_PORT, I8042_PORTS = 0x60, 5  # data 0x60, command/status 0x64
POWER_CONTROL_PORT = 0x600  # ACPI sleep control, sleep status, reset
PM_TIMER_PORT = 0x608
BOOT_STACK = 0x8FF0  # below the page tables; Linux switches stacks at once
X87_CONTROL_DEFAULT = 0x37F  # FNINIT's control word (SDM vol. 1, 8.1.5)
MXCSR_DEFAULT = 0x1F80  # all SIMD exceptions masked (SDM vol. 1, 10.2.3.1)


@dataclass
class MachineContext:
    """What the init steps build, step by step."""

    config: VMConfig
    # Appended to the initrd as another cpio archive (pyfastvm.run's runner).
    initrd_overlay: bytes = b""
    # Boot a bzImage as the vmlinux inside it, decompressed on the host.
    decompress_kernel: bool = True
    profile: HostProfile = field(default_factory=host_profile)
    vm: Vm | None = None
    serial: Serial | None = None
    acpi: AcpiTables | None = None
    plan: BootPlan | None = None
    vcpus: list[Vcpu] = field(default_factory=list)

    @property
    def machine(self) -> Vm:
        assert self.vm is not None, "the 'vm' step has not run"
        return self.vm


def create_vm(ctx: MachineContext) -> None:
    # Ports nobody claims read as 0xff, as on a PC, so probes find nothing.
    ctx.vm = Vm(ctx.config.memory_bytes, ignore_unclaimed=True)


def drop_vm(ctx: MachineContext) -> None:
    ctx.vm = None


def enable_exit_assists(ctx: MachineContext) -> None:
    """The work this host's KVM leaves to user space, completed in the run
    loop (pyfastvm.host); before the guest first runs."""
    ctx.machine.enable_exit_assists(list(ctx.profile.exit_assists))


def create_irqchip(ctx: MachineContext) -> None:
    """KVM's PICs and I/O APIC, wired as on a PC (see x86.interrupts)."""
    ctx.machine.create_irqchip()
    ctx.machine.set_gsi_routing(pc_gsi_routes())


def add_serial(ctx: MachineContext) -> None:
    serial = Serial()
    ctx.machine.add_pio_device(COM1_PORT, Serial.PORTS, serial)
    ctx.machine.register_irqfd(serial.irq_fd, COM1_IRQ)
    ctx.serial = serial


def drop_serial(ctx: MachineContext) -> None:
    ctx.serial = None


def add_i8042(ctx: MachineContext) -> None:
    ctx.machine.add_pio_device(I8042_PORT, I8042_PORTS, I8042())


def add_acpi(ctx: MachineContext) -> None:
    """The PM timer, the sleep and reset registers, and the tables that
    describe them, the vCPUs and the serial port to the guest."""
    ctx.machine.add_pio_device(PM_TIMER_PORT, PmTimer.PORTS, PmTimer())
    ctx.machine.add_pio_device(POWER_CONTROL_PORT, PowerControl.PORTS, PowerControl())
    platform = AcpiPlatform(
        cpu_count=ctx.config.vcpus,
        pm_timer_port=PM_TIMER_PORT,
        power_control_port=POWER_CONTROL_PORT,
        serial_ports=(SerialPort(COM1_PORT, COM1_IRQ),),
    )
    ctx.acpi = build_acpi_tables(platform, ACPI_TABLES_ADDR)
    ctx.machine.memory.write(ctx.acpi.base, ctx.acpi.image)


def drop_acpi(ctx: MachineContext) -> None:
    ctx.acpi = None


def add_user_devices(ctx: MachineContext) -> None:
    for spec in ctx.config.devices:
        add = ctx.machine.add_pio_device if spec.bus == "pio" else ctx.machine.add_mmio_device
        add(spec.base, spec.length, spec.device)


def initrd_image(ctx: MachineContext) -> bytes | None:
    """The user's initrd, then the overlay, each 4-byte aligned as the
    kernel's initramfs unpacker wants concatenated archives."""
    user = ctx.config.initrd.read_bytes() if ctx.config.initrd is not None else b""
    user += bytes(-len(user) % 4)
    image = user + ctx.initrd_overlay
    return image or None


def load_linux(ctx: MachineContext) -> None:
    assert ctx.config.kernel is not None, "VMConfig.kernel is required to boot"
    ctx.plan = load_kernel(
        ctx.config.kernel,
        memory_size=ctx.config.memory_bytes,
        cmdline=kernel_cmdline(ctx.config.cmdline, host_args=ctx.profile.kernel_args),
        initrd=initrd_image(ctx),
        decompress=ctx.decompress_kernel,
    )
    ctx.plan.write_to(ctx.machine.memory)


def create_vcpus(ctx: MachineContext) -> None:
    """Every vCPU gets its own CPUID, the boot MSRs and the LAPIC pins. The
    boot vCPU enters Linux; the others wait in KVM's local APIC for the
    INIT/SIPI with which the guest starts them."""
    supported = ctx.machine.kvm.supported_cpuid()
    count = ctx.config.vcpus
    for index in range(count):
        vcpu = ctx.machine.create_vcpu(index)
        hidden = ctx.profile.hidden_kvm_features
        vcpu.set_cpuid(
            vcpu_cpuid(supported, apic_id=index, vcpu_count=count, hidden_kvm_features=hidden)
        )
        vcpu.set_msrs(boot_msrs())
        wire_local_interrupts(vcpu)
        ctx.vcpus.append(vcpu)
    enter_linux(ctx)


def enter_linux(ctx: MachineContext) -> None:
    """The boot vCPU as the 64-bit boot protocol asks: long mode with the
    boot GDT, RSI = the zero page, interrupts off (Documentation/arch/x86/
    boot.rst, "64-bit Boot Protocol")."""
    assert ctx.plan is not None
    vcpu = ctx.vcpus[0]
    enter_long_mode(vcpu, ctx.machine.memory)
    fpu = vcpu.get_fpu()
    fpu.fcw, fpu.mxcsr = X87_CONTROL_DEFAULT, MXCSR_DEFAULT
    vcpu.set_fpu(fpu)
    regs = vcpu.get_regs()
    regs.rip, regs.rsi, regs.rsp = ctx.plan.entry_64, ctx.plan.zero_page_addr, BOOT_STACK
    vcpu.set_regs(regs)


def drop_vcpus(ctx: MachineContext) -> None:
    ctx.vcpus.clear()


def default_init_chain(profile: HostProfile | None = None) -> InitChain[MachineContext]:
    """The steps of a Linux micro-VM on a host of `profile` (this one's by
    default); add your own before starting it."""
    profile = profile if profile is not None else host_profile()
    chain: InitChain[MachineContext] = InitChain()
    chain.add("vm", "core", create_vm, drop_vm)
    if profile.exit_assists:
        chain.add("exit-assists", "base", enable_exit_assists)
    chain.add("irqchip", "base", create_irqchip)
    chain.add("pit", "base", lambda ctx: ctx.machine.create_pit())
    chain.add("serial", "dev", add_serial, drop_serial)
    chain.add("i8042", "dev", add_i8042)
    chain.add("acpi", "dev", add_acpi, drop_acpi)
    chain.add("devices", "dev", add_user_devices)
    chain.add("kernel", "late", load_linux)
    chain.add("vcpus", "late", create_vcpus, drop_vcpus)
    return chain
