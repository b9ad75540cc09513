"""A feature written only as a TOML file: its program, module and unit at work in a boot.

The feature file names three things and nothing else brings them: a program of the
sysroot (`base64`, from coreutils), a kernel module no image has by default
(`tcp_bbr`, a TCP congestion control: loading it needs no hardware) and a test
package's unit, enabled by its own [Install] section as `--add-unit` would enable it.
In the initrd the unit loads the module (ExecStartPre=modprobe: it fails, and so the
unit, were the module not in the image), its helper checks /sys/module/tcp_bbr and
prints the boot's token through base64 (an absent program prints nothing); the test
expects the encoded token, so each of the three is proven by what it did. `bookend why`
on the image names the feature file for each, and the unit too for what the unit runs.

The sysroot is the cached Debian 13 tree, linked into the test's directory with the
package's files (harness/treecopy.py, as tests/vm/test_units.py does); the feature file
lies in a directory of the test given as --feature-dir. The boot goes on to the usual
bookworm root disk, whose systemd reports the token after switch-root.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookend.resolve import newest_kernel
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import Boot, BootOptions
from harness.rootdisk import RootDisk
from harness.token import boot_to_token, new_token, with_token
from harness.treecopy import put_file, tree_with_files
from harness.ukisysroot import ensure_trixie_sysroot

BOOT_LIMIT = 600
FEATURE = "bookend-proof"
UNIT = "bookend-proof.service"
HELPER = "/usr/local/bin/bookend-proof-report"
PROGRAM = "/usr/bin/base64"
MODULE = "tcp_bbr"
FEATURE_FILE = f"""\
help = "bookend test: a program, a kernel module and a unit, declared without Python"
executables = ["{PROGRAM}"]
modules = ["{MODULE}"]
units = ["{UNIT}"]
"""
UNIT_FILE = f"""\
[Unit]
Description=bookend test: the unit of a feature file
DefaultDependencies=no

[Service]
Type=oneshot
ExecStartPre=modprobe {MODULE}
ExecStart=bookend-proof-report

[Install]
WantedBy=initrd.target
"""
# The shell's builtins, and base64 only because the feature file brings it.
HELPER_SCRIPT = f"""\
#!/bin/sh
read -r cmdline < /proc/cmdline
for word in $cmdline; do
    case $word in bookend.token=*) token=${{word#bookend.token=}} ;; esac
done
module=absent
[ -d /sys/module/{MODULE} ] && module=loaded
where=real
[ -e /etc/initrd-release ] && where=initrd
encoded=$(printf %s "$token" | {PROGRAM})
echo "BOOKEND-FEATURE encoded=$encoded {MODULE}=$module in=$where" > /dev/kmsg
"""
PACKAGE_FILES = {
    f"/usr/lib/systemd/system/{UNIT}": (UNIT_FILE, 0o644),
    HELPER: (HELPER_SCRIPT, 0o755),
}


@pytest.fixture(scope="module")
def proof_sysroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Debian 13 tree with the test package's unit and helper."""
    copy = tmp_path_factory.mktemp("feature") / "sysroot"
    with tree_with_files(ensure_trixie_sysroot(), copy, PACKAGE_FILES) as root:
        yield root


def test_feature_file_brings_a_program_a_module_and_a_unit_that_work(
    proof_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(proof_sysroot)
    assert kver is not None
    feature_file = put_file(tmp_path / "features", f"/{FEATURE}.toml", FEATURE_FILE)
    initrd = tmp_path / "initrd.img"
    result = bookend("build", "--sysroot", str(proof_sysroot), "--kver", kver, "-o", str(initrd),
                     "--no-exitrd", "--feature-dir", str(feature_file.parent),
                     "--add-feature", FEATURE, *QEMU_VIRTIO_EXT4, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert UNIT not in result.stderr  # meant for the initrd: no warning about it

    reason = f"feature {FEATURE} ({feature_file})"
    unit_reason = f"{reason}: {UNIT}"
    module_file = f"/usr/lib/modules/{kver}/kernel/net/ipv4/{MODULE}.ko.xz"
    for path, expected in (
        (PROGRAM, f"{PROGRAM} <- {reason}"),
        (module_file, f"{module_file} <- module {MODULE} <- {reason}"),
        (f"/usr/lib/systemd/system/{UNIT}", f"{UNIT} <- {unit_reason}"),
        (HELPER, f"<- Exec of /usr/lib/systemd/system/{UNIT} <- {unit_reason}"),
        (f"/etc/systemd/system/initrd.target.wants/{UNIT}", f"<- {unit_reason}"),
    ):
        why = bookend("why", str(initrd), path).stdout.rstrip()
        assert why.endswith(expected), why

    # `bookend plan --why` gives the same chain before any image is built.
    planned = bookend("plan", "--sysroot", str(proof_sysroot), "--kver", kver,
                      "--feature-dir", str(feature_file.parent), "--add-feature", FEATURE,
                      *QEMU_VIRTIO_EXT4, "--why", HELPER).stdout  # fmt: skip
    assert planned.rstrip().endswith(f"<- {unit_reason}"), planned

    token = new_token()
    encoded = base64.b64encode(token.encode()).decode()
    options = BootOptions(kernel=proof_sysroot / f"boot/vmlinuz-{kver}", initrd=initrd,
                          disks=(root_disk.image,), append=f"root=UUID={root_disk.uuid} rw",
                          timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip

    def feature_reports(vm: Boot) -> None:
        vm.expect(rf"BOOKEND-FEATURE encoded={re.escape(encoded)} {MODULE}=loaded in=initrd\s", 300)

    boot_to_token(with_token(options, token), on_the_way=feature_reports, token=token)
