"""Fixtures for the VM tests, and the `vm` mark on every test collected here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.qemu import Kernel, installed_kernels
from tests.vm.rootdisk import RootDisk, ensure_root_disk

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected test, not only those below this directory.
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    """The newest kernel in /boot; its modules are under /lib/modules/<version>."""
    kernels = installed_kernels()
    if not kernels:
        pytest.skip("no kernel in /boot (install one, e.g. linux-image-amd64)")
    return kernels[-1]


@pytest.fixture(scope="session")
def root_disk() -> RootDisk:
    return ensure_root_disk()


@pytest.fixture
def console_log(tmp_path: Path) -> Path:
    """Where a test's guest console goes; pytest keeps recent tmp_paths for a post-mortem."""
    return tmp_path / "console.log"
