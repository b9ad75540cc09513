"""`--add-unit`: a sysroot's own service runs in the initrd of a real boot.

The service is none of bookend's features: a test package's unit, with a helper
program found by its bare name on systemd's search path, an EnvironmentFile= and a
ConditionPathExists= file. Only `--add-unit` brings them (and the link its [Install]
section asks for): were any of them missing, the unit would be skipped, fail or print
no mark, and the line with the boot's token would never come.

Which sysroot: the test's files must not go into the host's own /etc or /usr, so the
image is built from a sysroot made for the test. The cached Debian 13 tree
(harness/ukisysroot.py) is one already, with its own kernel, which the guest boots; it
is linked, not copied, into the test's directory (harness/treecopy.py) and given the
package's files there, so the cache stays as it was. The root disk is the usual
bookworm one, whose systemd reports the token after switch-root (as in test_uki.py):
the boot goes on to the real root, so the added unit did not break the initrd either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bookend.resolve import newest_kernel
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import Boot, BootOptions
from harness.rootdisk import RootDisk
from harness.token import boot_to_token, new_token, with_token
from harness.treecopy import tree_with_files
from harness.ukisysroot import ensure_trixie_sysroot

BOOT_LIMIT = 600
UNIT = "bookend-demo.service"
UNIT_FILE = """\
[Unit]
Description=bookend test: a package's service added with --add-unit
DefaultDependencies=no
ConditionPathExists=/etc/bookend-demo.conf

[Service]
Type=oneshot
EnvironmentFile=/etc/default/bookend-demo
ExecStart=bookend-demo-report

[Install]
WantedBy=initrd.target
"""
# With the shell's builtins only: the initrd holds what the closure found, no more.
HELPER = """\
#!/bin/sh
read -r cmdline < /proc/cmdline
for word in $cmdline; do
    case $word in bookend.token=*) token=${word#bookend.token=} ;; esac
done
where=real
[ -e /etc/initrd-release ] && where=initrd
echo "BOOKEND-UNIT $BOOKEND_DEMO_MARK token=$token in=$where" > /dev/kmsg
"""
PACKAGE_FILES = {
    f"/usr/lib/systemd/system/{UNIT}": (UNIT_FILE, 0o644),
    "/usr/local/bin/bookend-demo-report": (HELPER, 0o755),
    "/etc/default/bookend-demo": ("BOOKEND_DEMO_MARK=from-environment-file\n", 0o644),
    "/etc/bookend-demo.conf": ("# its presence lets the unit start\n", 0o644),
}


@pytest.fixture(scope="module")
def demo_sysroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Debian 13 tree with the test package's files."""
    copy = tmp_path_factory.mktemp("units") / "sysroot"
    with tree_with_files(ensure_trixie_sysroot(), copy, PACKAGE_FILES) as root:
        yield root


def test_added_unit_runs_in_the_initrd_with_its_program_and_environment(
    demo_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(demo_sysroot)
    assert kver is not None
    initrd = tmp_path / "initrd.img"
    result = bookend("build", "--sysroot", str(demo_sysroot), "--kver", kver, "-o", str(initrd),
                     "--no-exitrd", "--add-unit", UNIT, *QEMU_VIRTIO_EXT4,
                     check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert UNIT not in result.stderr  # meant for the initrd: no warning about it
    why = bookend("why", str(initrd), "/usr/local/bin/bookend-demo-report").stdout
    assert why.rstrip().endswith(f"units (command line): {UNIT}"), why

    token = new_token()
    options = BootOptions(kernel=demo_sysroot / f"boot/vmlinuz-{kver}", initrd=initrd,
                          disks=(root_disk.image,), append=f"root=UUID={root_disk.uuid} rw",
                          timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip

    def unit_reports(vm: Boot) -> None:
        vm.expect(rf"BOOKEND-UNIT from-environment-file token={token} in=initrd\s", 300)

    boot_to_token(with_token(options, token), on_the_way=unit_reports, token=token)
