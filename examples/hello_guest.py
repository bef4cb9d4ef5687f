"""Run a tiny 64-bit guest that prints through a Python device and exits."""

import pyfastvm
from pyfastvm.devices import DebugExit
from pyfastvm.x86.long_mode import enter_long_mode


class Console(pyfastvm.Device):
    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        print(data.decode(), end="")


vm = pyfastvm.Vm(memory_size=16 << 20)
vm.add_pio_device(0x3F8, 8, Console())
vm.add_pio_device(0xF4, 1, DebugExit())
# lea rsi, [rip+msg]; mov ecx, 18; mov dx, 0x3f8; rep outsb; mov al, 7; out 0xf4, al
code = bytes.fromhex("488d350f000000b91200000066baf803f36eb007e6f4")
vm.memory.write(0x10000, code + b"Hello from a VM!\r\n")
vcpu = vm.create_vcpu(0)
enter_long_mode(vcpu, vm.memory)
vcpu.set_regs(pyfastvm.Regs(rip=0x10000, rsp=0x80000, rflags=2))
exit = vcpu.run()
print(f"guest stopped: {exit.reason}, status {exit.status}")
