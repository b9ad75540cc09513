"""The kernel hooks, really run: the host's kernel-install and Debian's hook convention.

Everything is written under temporary directories: kernel-install is pointed at a
temporary $BOOT with a configuration root of its own, and the Debian hook is given
a kernel image in a temporary directory, beside which it writes the initrd.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from bookend.inspect.check import check_image
from bookend.inspect.image import scan_image
from harness.images import bookend

KVER = max(os.listdir("/lib/modules"), default="") if os.path.isdir("/lib/modules") else ""
KERNEL = Path(f"/boot/vmlinuz-{KVER}")
pytestmark = pytest.mark.skipif(not KERNEL.is_file(), reason="no installed kernel in /boot")
# systemd's own plugin that turns the staged initrd into a boot loader entry. Neither
# 50-depmod (it would rewrite the host's modules.dep) nor Debian's 85-initrd (which
# install-kernel-hooks masks) takes part.
LOADER_ENTRY_PLUGIN = Path("/usr/lib/kernel/install.d/90-loaderentry.install")
# The hooks build with this configuration: lz4 shows the file was honoured.
CONFIG = 'compress = "lz4"\n'


@pytest.fixture(scope="module")
def hooks_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    (root / "bookend.toml").write_text(CONFIG)
    result = bookend("install-kernel-hooks", "--root", str(root), "--config",
                     str(root / "bookend.toml"), "--exitrd-output",
                     str(root / "var/lib/bookend/exitrd.img"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def kernel_install(
    hooks_root: Path, boot: Path, install_conf: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """`kernel-install add` into boot, with our plugin and systemd's loader entry plugin."""
    if shutil.which("kernel-install") is None:
        pytest.skip("no kernel-install (systemd) on this machine")
    machine_id = secrets.token_hex(16)
    (boot / machine_id).mkdir(parents=True)
    conf = boot.parent / "kernel-conf"
    conf.mkdir()
    (conf / "install.conf").write_text(install_conf)
    (conf / "cmdline").write_text("root=LABEL=bookend-root ro\n")
    plugins = [hooks_root / "etc/kernel/install.d/50-bookend.install", LOADER_ENTRY_PLUGIN]
    env = {
        **os.environ,
        "KERNEL_INSTALL_CONF_ROOT": str(conf),  # instead of the host's /etc/kernel
        "BOOT_ROOT": str(boot),
        "MACHINE_ID": machine_id,
        "KERNEL_INSTALL_PLUGINS": " ".join(map(str, plugins)),
    }
    return subprocess.run(["kernel-install", "--verbose", "add", KVER, str(KERNEL), *args],
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip


def entry_of(boot: Path) -> tuple[Path, str]:
    """The entry directory and the loader entry kernel-install made."""
    (machine_id,) = (p.name for p in boot.iterdir() if p.name != "loader")
    entry = boot / "loader/entries" / f"{machine_id}-{KVER}.conf"
    return boot / machine_id / KVER, entry.read_text()


def initrd_lines(entry: str) -> list[str]:
    """The loader entry's initrd paths, without the part above $BOOT's mount point."""
    paths = [line.split()[1] for line in entry.splitlines() if line.startswith("initrd")]
    # 90-loaderentry writes paths relative to the file system $BOOT is on.
    return ["/" + "/".join(Path(p).parts[-3:]) for p in paths]


def test_kernel_install_add_puts_bookend_initrd_in_the_entry(
    hooks_root: Path, tmp_path: Path
) -> None:
    boot = tmp_path / "boot"
    result = kernel_install(hooks_root, boot, "layout=bls\n")
    assert result.returncode == 0, result.stdout + result.stderr
    entry_dir, entry = entry_of(boot)
    initrd = entry_dir / "initrd"
    assert check_image(initrd).problems == []
    assert check_image(initrd).kind == "initrd"
    assert "usr/lib/bookend/manifest.json" in {e.path for e in scan_image(initrd).entries}
    assert [s.compression for s in scan_image(initrd).segments][-1] == "lz4"
    assert initrd_lines(entry) == [f"/{entry_dir.parent.name}/{KVER}/initrd"]
    assert "options    root=LABEL=bookend-root ro" in entry
    exitrd = hooks_root / "var/lib/bookend/exitrd.img"
    assert check_image(exitrd).kind == "exitrd" and check_image(exitrd).problems == []
    assert Path(f"{exitrd}.sha256").is_file()


def test_kernel_install_leaves_the_initrd_to_another_generator(
    hooks_root: Path, tmp_path: Path
) -> None:
    boot = tmp_path / "boot"
    result = kernel_install(hooks_root, boot, "layout=bls\ninitrd_generator=dracut\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "initrd generator is 'dracut', not bookend" in result.stdout
    entry_dir, entry = entry_of(boot)
    assert not (entry_dir / "initrd").exists()
    assert initrd_lines(entry) == []


def test_kernel_install_keeps_an_initrd_given_on_the_command_line(
    hooks_root: Path, tmp_path: Path
) -> None:
    given = tmp_path / "given.img"
    given.write_bytes(b"07070100")
    boot = tmp_path / "boot"
    result = kernel_install(hooks_root, boot, "layout=bls\n", str(given))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "initrd given on the command line" in result.stdout
    entry_dir, entry = entry_of(boot)
    assert sorted(p.name for p in entry_dir.iterdir()) == ["given.img", "linux"]
    assert initrd_lines(entry) == [f"/{entry_dir.parent.name}/{KVER}/given.img"]


def test_debian_hooks_build_and_remove_the_initrd_beside_the_kernel(
    hooks_root: Path, tmp_path: Path
) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / f"vmlinuz-{KVER}"
    kernel.symlink_to(KERNEL)
    postinst = hooks_root / "etc/kernel/postinst.d/zz-bookend"
    result = subprocess.run([postinst, KVER, kernel], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # stdout belongs to debconf in maintainer scripts
    initrd = boot / f"initrd.img-{KVER}"
    assert check_image(initrd).problems == [] and check_image(initrd).kind == "initrd"

    postrm = hooks_root / "etc/kernel/postrm.d/zz-bookend"
    result = subprocess.run([postrm, KVER, kernel], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert not initrd.exists()


@pytest.mark.parametrize(
    ("env", "kernel_name"),
    [({}, "vmlinuz-gone"), ({"INITRD": "No"}, None), ({"DEB_MAINT_PARAMS": "'upgrade'"}, None)],
)
def test_debian_postinst_does_nothing_when_debian_says_so(
    hooks_root: Path, tmp_path: Path, env: dict[str, str], kernel_name: str | None
) -> None:
    kernel = tmp_path / f"vmlinuz-{KVER}"
    kernel.symlink_to(KERNEL)
    if kernel_name:
        kernel = tmp_path / kernel_name
    postinst = hooks_root / "etc/kernel/postinst.d/zz-bookend"
    result = subprocess.run([postinst, KVER, kernel], env={**os.environ, **env},
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"vmlinuz-{KVER}"]
