"""A sysroot's architecture, from its own systemd, decides the architecture facts."""

from __future__ import annotations

import shutil
from pathlib import Path

from bookend import arches
from bookend.drivers import DRIVER_CLASSES
from bookend.resolve import installed_kernels
from bookend.sysroot import Sysroot
from bookend.uki import STUB_DIR, stub_paths
from tests.unit.conftest import make_root_tree

from .elftree import compile_c


def test_the_architecture_is_read_from_the_sysroots_systemd(root_tree: Path) -> None:
    assert arches.sysroot_arch(Sysroot(root_tree)) is None  # nothing to read yet
    compile_c("int main(void) { return 0; }\n", root_tree / "usr/lib/systemd/systemd")
    arch = arches.sysroot_arch(Sysroot(root_tree))
    # This host's compiler makes the host's machine; its row of the table is the answer.
    assert arch is not None
    assert arches.by_elf(arch.elf_machine, arch.elf_class) is arch
    assert stub_paths(Sysroot(root_tree)) == (f"{STUB_DIR}/{arch.efi_stub}",)


def test_every_architecture_row_is_whole_and_distinct() -> None:
    keys = [(a.elf_machine, a.elf_class) for a in arches.ARCHES]
    assert len(set(keys)) == len(keys)
    assert len({a.multiarch for a in arches.ARCHES}) == len(arches.ARCHES)
    crypto = DRIVER_CLASSES["crypto"].directories
    assert all(a.crypto_dir in crypto for a in arches.ARCHES)


def test_a_tree_with_only_usr_lib_modules_has_its_kernel_found(tmp_path: Path) -> None:
    root = make_root_tree(tmp_path / "sysroot", "6.12.0-usr")
    (root / "lib").unlink()  # not merged: /lib is no link to usr/lib
    (root / "lib").mkdir()
    assert installed_kernels(root) == ["6.12.0-usr"]
    shutil.rmtree(root / "usr/lib/modules")
    assert installed_kernels(root) == []
