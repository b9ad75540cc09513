"""What extends the exitrd runs there: a feature file's shutdown hook and the hooks of
three system extensions (a directory, a squashfs and an erofs image) run at power-off
after the pivot into the exitrd, each with the verb and the boot's token.

The hooks are none of bookend's own: the feature is a TOML file in a --feature-dir
(named by --exitrd-add-feature only, so the initrd has not got it) whose hook is a
script of the sysroot outside systemd-shutdown's directory; the extensions are made
by the test, and the squashfs one's hook is an ELF program that needs a library of
the extension and the sysroot's C library. Each hook prints its line only when it
runs from the exitrd (its /etc/initrd-release says so); were a hook, its link, its
interpreter or a library missing, its line would never come.

The images are built from a copy of the cached Debian 13 tree (the test's files must
not go into the host's /usr), whose kernel the guest boots, as in test_units.py; the
root disk is the usual bookworm one, into which a job installs the exitrd, and whose
power-off is the shutdown under test.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookend.resolve import newest_kernel
from bookend.sysroot import parse_os_release
from harness.exitrdjob import install_exitrd_job, shutdown_through, split_at_pivot
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import BootOptions
from harness.rootdisk import RootDisk
from harness.treecopy import put_file, tree_with_files
from harness.ukisysroot import ensure_trixie_sysroot
from tests.unit.elftree import compile_c, shared_library

BOOT_LIMIT = 900
HOOK_DIR = "/usr/lib/systemd/system-shutdown"
FEATURE_HOOK = "/usr/libexec/bookend-demo/exitrd-hook"
# With the shell's builtins only: the exitrd holds what the closure found, no more.
HOOK_SCRIPT = """\
#!/bin/sh
read -r cmdline < /proc/cmdline
for word in $cmdline; do
    case $word in bookend.token=*) token=${word#bookend.token=} ;; esac
done
where=unknown
while IFS= read -r line; do
    case $line in VARIANT_ID=*) where=${line#VARIANT_ID=} ;; esac
done < /etc/initrd-release
where=${where#\\"}
echo "BOOKEND-EXITRD-HOOK LABEL token=$token verb=$1 in=${where%\\"}" > /dev/kmsg
"""
HOOK_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
const char *extension_label(void);
int main(int argc, char **argv) {
    char cmdline[4096] = "", release[4096] = "", *token = "";
    FILE *file = fopen("/proc/cmdline", "r");
    if (file) { fgets(cmdline, sizeof cmdline, file); fclose(file); }
    char *found = strstr(cmdline, "bookend.token=");
    if (found) { token = found + strlen("bookend.token="); token[strcspn(token, " \n")] = 0; }
    file = fopen("/etc/initrd-release", "r");
    if (file) { fread(release, 1, sizeof release - 1, file); fclose(file); }
    const char *where = strstr(release, "VARIANT_ID=\"bookend-exitrd\"") ? "bookend-exitrd" : "?";
    FILE *kmsg = fopen("/dev/kmsg", "w");
    if (!kmsg) return 1;
    fprintf(kmsg, "BOOKEND-EXITRD-HOOK %s token=%s verb=%s in=%s\n",
            extension_label(), token, argc > 1 ? argv[1] : "", where);
    return fclose(kmsg) != 0;
}
"""
FEATURE = f"""\
help = "the test's own shutdown hook, for the exitrd only"

[exitrd]
shutdown_hooks = ["{FEATURE_HOOK}"]
purpose = "report from the exitrd"
"""
LABELS = ("feature-file", "directory-sysext", "squashfs-sysext-elf", "erofs-sysext")


@pytest.fixture(scope="module")
def demo_sysroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Debian 13 tree with the feature's hook script."""
    copy = tmp_path_factory.mktemp("exitrd-ext") / "root"
    hook = {FEATURE_HOOK: (HOOK_SCRIPT.replace("LABEL", "feature-file"), 0o755)}
    with tree_with_files(ensure_trixie_sysroot(), copy, hook) as root:
        yield root


def extension_tree(directory: Path, name: str, release: str) -> Path:
    tree = directory / name
    put_file(tree, f"/usr/lib/extension-release.d/extension-release.{name}", release)
    return tree


def make_extensions(sysroot: Path, directory: Path) -> list[Path]:
    """The directory, squashfs and erofs extensions, each with its hook."""
    host = parse_os_release((sysroot / "usr/lib/os-release").read_text())
    matching = f"ID={host['ID']}\nVERSION_ID={host['VERSION_ID']}\nSYSEXT_SCOPE=initrd\n"
    plain = extension_tree(directory, "demo-dir", matching)
    put_file(plain, f"{HOOK_DIR}/demo-dir", HOOK_SCRIPT.replace("LABEL", "directory-sysext"), 0o755)

    elf = extension_tree(directory, "demo-squashfs", "ID=_any\nSYSEXT_SCOPE=initrd\n")
    multiarch = "/usr/lib/x86_64-linux-gnu"
    label = 'const char *extension_label(void) { return "squashfs-sysext-elf"; }'
    shared_library(elf, multiarch, "libbookend-demo-ext.so.1", label)
    compile_c(HOOK_PROGRAM, elf / f"{HOOK_DIR[1:]}/demo-squashfs",
              f"-L{elf}{multiarch}", "-l:libbookend-demo-ext.so.1")  # fmt: skip
    squashfs = directory / "demo-squashfs.raw"
    subprocess.run(["mksquashfs", str(elf), str(squashfs), "-quiet", "-no-progress", "-all-root"],
                   check=True)  # fmt: skip

    erofs_tree = extension_tree(directory, "demo-erofs", matching)
    hook = HOOK_SCRIPT.replace("LABEL", "erofs-sysext")
    put_file(erofs_tree, f"{HOOK_DIR}/demo-erofs", hook, 0o755)
    erofs = directory / "demo-erofs.raw"
    subprocess.run(["mkfs.erofs", "--all-root", "--quiet", str(erofs), str(erofs_tree)], check=True)
    return [plain, squashfs, erofs]


def test_feature_and_extension_hooks_run_in_the_exitrd_after_the_pivot(
    demo_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(demo_sysroot)
    assert kver is not None
    features = tmp_path / "features"
    put_file(features, "/demo-shutdown.toml", FEATURE)
    extensions = make_extensions(demo_sysroot, tmp_path / "extensions")
    exitrd = tmp_path / "exitrd" / "exitrd.img"
    exitrd.parent.mkdir()
    sysext_flags = [flag for path in extensions for flag in ("--exitrd-sysext", str(path))]
    result = bookend("build", "--sysroot", str(demo_sysroot), "--kver", kver,
                     "-o", str(tmp_path / "initrd.img"), "--exitrd-output", str(exitrd),
                     "--feature-dir", str(features), "--exitrd-add-feature", "demo-shutdown",
                     *sysext_flags, *QEMU_VIRTIO_EXT4, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    why = bookend("why", str(exitrd), FEATURE_HOOK).stdout
    origin = features / "demo-shutdown.toml"
    assert why.rstrip().endswith(f"shutdown hook of feature demo-shutdown ({origin})"), why

    job = install_exitrd_job(tmp_path / "job.img", exitrd.parent)
    options = BootOptions(kernel=demo_sysroot / f"boot/vmlinuz-{kver}",
                          initrd=tmp_path / "initrd.img", disks=(root_disk.image, job),
                          append=f"root=UUID={root_disk.uuid} rw", timeout=BOOT_LIMIT,
                          log_path=console_log)  # fmt: skip
    text = shutdown_through(options)
    report = re.search(r"BOOKEND-TOKEN (\w+) booted-with-initrd", text)
    assert report, "no report of the boot's token"
    token = report.group(1)
    before, pivoted = split_at_pivot(text)
    assert "BOOKEND-EXITRD-HOOK" not in before  # only the exitrd has these hooks
    ends = []
    for label in LABELS:
        line = re.search(rf"BOOKEND-EXITRD-HOOK {label} token={token} verb=poweroff "
                         rf"in=bookend-exitrd\s", pivoted)  # fmt: skip
        assert line, f"no line of the {label} hook after the pivot:\n{pivoted[-3000:]}"
        ends.append(line.end())
    # ... and all of them before the power-off itself.
    power_off = re.search(r"Powering off|reboot: Power down", pivoted[max(ends) :])
    assert power_off, pivoted[-2000:]
