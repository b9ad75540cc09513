from __future__ import annotations

from pathlib import Path

import pytest

from bookend.errors import SysrootError
from bookend.sysroot import Link, Sysroot, parse_os_release


def test_absolute_link_resolves_inside_the_sysroot(root_tree: Path) -> None:
    (root_tree / "usr/bin/udevadm").write_text("")
    (root_tree / "usr/lib/systemd").mkdir()
    (root_tree / "usr/lib/systemd/systemd-udevd").symlink_to("/bin/udevadm")
    resolved = Sysroot(root_tree).resolve("/lib/systemd/systemd-udevd")
    assert resolved.path == "/usr/bin/udevadm"
    assert resolved.links == (
        Link("/lib", "usr/lib"),
        Link("/usr/lib/systemd/systemd-udevd", "/bin/udevadm"),
        Link("/bin", "usr/bin"),
    )


def test_link_escaping_with_dotdot_stays_inside(root_tree: Path) -> None:
    (root_tree / "etc/hosts").write_text("inside")
    (root_tree / "usr/bin/escape").symlink_to("../../../../../../etc/hosts")
    sysroot = Sysroot(root_tree)
    assert sysroot.resolve("/usr/bin/escape").path == "/etc/hosts"
    assert sysroot.read_text("/usr/bin/escape") == "inside"


def test_symlink_loop_is_an_error_naming_the_path(root_tree: Path) -> None:
    (root_tree / "usr/bin/a").symlink_to("b")
    (root_tree / "usr/bin/b").symlink_to("a")
    with pytest.raises(SysrootError, match=r"usr/bin/a: too many levels of symbolic links"):
        Sysroot(root_tree).resolve("/usr/bin/a")


def test_missing_path_reports_no_stat(root_tree: Path) -> None:
    resolved = Sysroot(root_tree).resolve("/bin/absent")
    assert resolved.st is None and resolved.path == "/usr/bin/absent"


def test_os_release_parsing() -> None:
    text = 'NAME="Debian GNU/Linux"\nID=debian\n# comment\nPRETTY_NAME=\'x "y"\'\n'
    assert parse_os_release(text) == {
        "NAME": "Debian GNU/Linux",
        "ID": "debian",
        "PRETTY_NAME": 'x "y"',
    }
