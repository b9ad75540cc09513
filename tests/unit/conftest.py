"""Fixture sysroots for unit tests: small trees laid out like a merged-/usr Debian."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bookend.archive import ArchiveEntry, EntryKind
from bookend.cli import vocabularies
from bookend.config import Config
from bookend.features.base import Generated, Request, RequestKind
from bookend.plan import Plan
from bookend.resolve import configure


def make_root_tree(root: Path, kver: str = "6.1.0-test") -> Path:
    """A minimal tree that passes the sysroot checks: usr/, etc/, lib -> usr/lib, modules."""
    for directory in ("usr/lib", "usr/bin", "usr/sbin", "etc", f"usr/lib/modules/{kver}"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in ("lib", "bin", "sbin"):
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"usr/{name}")
    (root / "usr/lib/os-release").write_text(
        'NAME="Fixture"\nPRETTY_NAME="Fixture OS 1"\nID=fixture\n'
    )
    if not (root / "etc/os-release").is_symlink():
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / f"usr/lib/modules/{kver}/modules.dep").write_text("")
    return root


@pytest.fixture
def root_tree(tmp_path: Path) -> Path:
    return make_root_tree(tmp_path / "sysroot")


def load_config(config_file: Path | None, cli_values: Mapping[str, Any], **options: Any) -> Config:
    """The configuration as `bookend build` makes it: read and checked, then resolved
    against its sysroot, with the feature and driver class names the CLI passes."""
    return configure(config_file, cli_values, vocabularies(), **options)


def stand_in_plan(*paths: str) -> Plan:
    """A plan for a fixture tree, whose systemd is a script standing in (its #! brings the
    shell, the shell its libraries): /init and /etc/initrd-release, and paths, each a
    PATH request."""
    return Plan(
        features=(),
        requests=tuple(
            Request(RequestKind.PATH, path, "test") for path in ("/usr/lib/systemd/systemd", *paths)
        ),
        generated=(
            Generated(
                ArchiveEntry("/init", EntryKind.SYMLINK, 0o777, target="usr/lib/systemd/systemd"),
                "test",
            ),
            Generated(
                ArchiveEntry("/etc/initrd-release", EntryKind.FILE, 0o644, data=b"ID=x\n"), "test"
            ),
        ),
    )
