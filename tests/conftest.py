import pyfastvm
import pytest


@pytest.fixture
def vm() -> pyfastvm.Vm:
    return pyfastvm.Vm(16 << 20)
