import pytest

import pyfastvm


@pytest.fixture
def vm() -> pyfastvm.Vm:
    return pyfastvm.Vm(16 << 20)
