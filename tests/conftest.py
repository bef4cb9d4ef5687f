import pytest

import pyfastvm


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a slow test (a stock-kernel boot, minutes on KVM-on-PVM
    hosts) run first, so that with parallel workers (pytest -n, files kept
    whole) the longest boot starts at once rather than last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture
def vm() -> pyfastvm.Vm:
    return pyfastvm.Vm(16 << 20)
