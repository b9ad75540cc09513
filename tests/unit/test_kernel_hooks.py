"""`bookend install-kernel-hooks`: what it writes under a root, and how the plugin fails."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.install import initramfs_tools_note
from harness.images import bookend

PLUGIN = "etc/kernel/install.d/50-bookend.install"
POSTINST = "etc/kernel/postinst.d/zz-bookend"
POSTRM = "etc/kernel/postrm.d/zz-bookend"
MASK = "etc/kernel/install.d/85-initrd.install"


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bookend("install-kernel-hooks", "--root", str(root), *args, check=False)


def test_both_hook_sets_are_written_executable_and_name_this_interpreter(tmp_path: Path) -> None:
    result = install(tmp_path, "--exitrd-output", "/srv/exitrd.img", "--config", "/etc/b.toml")
    assert result.returncode == 0, result.stderr
    for hook in (PLUGIN, POSTINST, POSTRM):
        path = tmp_path / hook
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, hook
        assert f"{tmp_path / hook}: installed" in result.stdout
        subprocess.run(["sh", "-n", str(path)], check=True)  # valid shell
    for hook in (PLUGIN, POSTINST):
        text = (tmp_path / hook).read_text()
        assert f"{sys.executable} -m bookend" in text
        assert "exitrd=/srv/exitrd.img" in text
        assert "build --config /etc/b.toml" in text
        assert "@" not in text.replace("$@", "")  # every placeholder filled
    assert "/srv/exitrd.img" not in (tmp_path / POSTRM).read_text()
    assert not (tmp_path / MASK).is_symlink()  # no Debian plugin in this root to mask


def test_without_config_the_hooks_build_with_bookend_defaults(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    text = (tmp_path / PLUGIN).read_text()
    assert "--config" not in text
    assert "exitrd=/var/lib/bookend/exitrd.img" in text


@pytest.mark.parametrize(
    ("flag", "present", "absent"),
    [
        ("--kernel-install", [PLUGIN], [POSTINST, POSTRM]),
        ("--debian", [POSTINST, POSTRM], [PLUGIN]),
    ],
)
def test_one_hook_set_alone(
    tmp_path: Path, flag: str, present: list[str], absent: list[str]
) -> None:
    assert install(tmp_path, flag).returncode == 0
    assert all((tmp_path / hook).is_file() for hook in present)
    assert not any((tmp_path / hook).exists() for hook in absent)


def test_debians_initrd_plugin_is_masked_and_unmasked(tmp_path: Path) -> None:
    shipped = tmp_path / "usr/lib/kernel/install.d/85-initrd.install"
    shipped.parent.mkdir(parents=True)
    shipped.write_text("#!/bin/sh\n")
    assert install(tmp_path, "--kernel-install").returncode == 0
    assert os.readlink(tmp_path / MASK) == "/dev/null"
    result = install(tmp_path, "--remove")
    assert result.returncode == 0
    assert not (tmp_path / MASK).is_symlink() and not (tmp_path / PLUGIN).exists()
    assert f"{tmp_path / PLUGIN}: removed" in result.stdout
    assert shipped.is_file()


def test_an_administrators_own_85_initrd_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/kernel/install.d").mkdir(parents=True)
    (tmp_path / "usr/lib/kernel/install.d/85-initrd.install").write_text("#!/bin/sh\n")
    own = tmp_path / MASK
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/sh\n# mine\n")
    assert install(tmp_path).returncode == 0
    assert install(tmp_path, "--remove").returncode == 0
    assert own.read_text() == "#!/bin/sh\n# mine\n"


def test_remove_takes_away_every_hook(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    assert install(tmp_path, "--remove").returncode == 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_relative_paths_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = install(tmp_path, "--exitrd-output", "exitrd.img")
    assert result.returncode == 2
    assert "must be an absolute path" in result.stderr
    assert not (tmp_path / "etc").exists()


def test_plugin_failure_is_a_nonzero_exit_with_one_line_saying_so(tmp_path: Path) -> None:
    assert install(tmp_path, "--exitrd-output", str(tmp_path / "exitrd.img")).returncode == 0
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {**os.environ, "KERNEL_INSTALL_STAGING_AREA": str(staging)}
    result = subprocess.run([tmp_path / PLUGIN, "add", "0.0.0-no-such-kernel", str(tmp_path),
                             "/boot/vmlinuz"], env=env, capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "no modules for kernel '0.0.0-no-such-kernel'" in lines[0]  # bookend's reason
    assert lines[-1] == (
        "50-bookend.install: bookend could not build the initrd for 0.0.0-no-such-kernel"
    )
    assert list(staging.iterdir()) == []


def test_plugin_remove_does_nothing(tmp_path: Path) -> None:
    assert install(tmp_path, "--kernel-install").returncode == 0
    result = subprocess.run([tmp_path / PLUGIN, "remove", "1.0", str(tmp_path)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_initramfs_tools_note_until_its_updates_are_switched_off(tmp_path: Path) -> None:
    assert initramfs_tools_note(tmp_path) is None
    tool = tmp_path / "usr/sbin/update-initramfs"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    note = initramfs_tools_note(tmp_path)
    assert note is not None and "update_initramfs=no" in note
    conf = tmp_path / "etc/initramfs-tools/update-initramfs.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("update_initramfs=yes\n")
    assert initramfs_tools_note(tmp_path) is not None
    conf.write_text("# managed by bookend\nupdate_initramfs=no\n")
    assert initramfs_tools_note(tmp_path) is None
