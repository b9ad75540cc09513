"""What a sysroot's own things added to an image do in a real boot, all in one boot: a
package's service added with `--add-unit` and a feature written only as a TOML file run
in the initrd; a feature file's shutdown hook and the hooks of three system extensions
run in the exitrd at power-off.

`--add-unit`: the service is none of bookend's features: a test package's unit, with a
helper program found by its bare name on systemd's search path, an EnvironmentFile= and
a ConditionPathExists= file. Only `--add-unit` brings them (and the link its [Install]
section asks for): were any of them missing, the unit would be skipped, fail or print
no mark, and the line with the boot's token would never come.

The feature file names three things and nothing else brings them: a program of the
sysroot (`base64`, from coreutils), a kernel module no image has by default (`tcp_bbr`,
a TCP congestion control: loading it needs no hardware) and a test package's unit,
enabled by its own [Install] section as `--add-unit` would enable it. In the initrd the
unit loads the module (ExecStartPre=modprobe: it fails, and so the unit, were the module
not in the image), its helper checks /sys/module/tcp_bbr and prints the boot's token
through base64 (an absent program prints nothing); the test expects the encoded token,
so each of the three is proven by what it did. `bookend why` on the image names the
feature file for each, and the unit too for what the unit runs.

The exitrd's additions are none of bookend's own: a feature (a TOML file in the same
--feature-dir, named by --exitrd-add-feature only, so the initrd has not got it) whose
hook is a script of the sysroot outside systemd-shutdown's directory, and three
extensions made by the test (a directory, a squashfs and an erofs image); the squashfs
one's hook is an ELF program that needs a library of the extension and the sysroot's C
library. Each hook prints its line, with the verb and the boot's token, only when it
runs from the exitrd (its /etc/initrd-release says so); were a hook, its link, its
interpreter or a library missing, its line would never come.

Which sysroot: the test's files must not go into the host's own /etc or /usr, so the
images are built from a sysroot made for the test. The cached Debian 13 tree
(harness/ukisysroot.py) is one already, with its own kernel, which the guest boots; it
is linked, not copied, into the test's directory (harness/treecopy.py) and given the
packages' files there, so the cache stays as it was. The root disk is the usual
bookworm one, whose systemd reports the token after switch-root (so the additions did
not break the initrd either); a job installs the exitrd in it, and its power-off is the
shutdown under test. The three tests read the one boot's console, each for its part.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bookend.resolve import newest_kernel
from bookend.sysroot import parse_os_release
from harness.exitrdjob import install_exitrd_job, shutdown_through, split_at_pivot
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import BootOptions
from harness.rootdisk import RootDisk
from harness.treecopy import put_file, squashfs_of, tree_with_files
from harness.ukisysroot import ensure_trixie_sysroot
from tests.unit.elftree import compile_c, shared_library

BOOT_LIMIT = 900

# --add-unit: a package's service, its helper, its environment and its condition.
ADDED_UNIT = "bookend-demo.service"
ADDED_UNIT_FILE = """\
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
ADDED_HELPER = "/usr/local/bin/bookend-demo-report"
# Both reporting programs' start, with the shell's builtins only (the initrd holds what
# the closure found, no more): the boot's token, and whether this is the initrd.
READ_TOKEN = """\
#!/bin/sh
read -r cmdline < /proc/cmdline
for word in $cmdline; do
    case $word in bookend.token=*) token=${word#bookend.token=} ;; esac
done
"""
TOKEN_AND_PLACE = READ_TOKEN + "where=real\n[ -e /etc/initrd-release ] && where=initrd\n"
ADDED_HELPER_SCRIPT = (
    TOKEN_AND_PLACE + 'echo "BOOKEND-UNIT $BOOKEND_DEMO_MARK token=$token in=$where" > /dev/kmsg\n'
)

# The feature file: a program, a module and a unit.
FEATURE = "bookend-proof"
FEATURE_UNIT = "bookend-proof.service"
FEATURE_HELPER = "/usr/local/bin/bookend-proof-report"
PROGRAM = "/usr/bin/base64"
MODULE = "tcp_bbr"
FEATURE_FILE = f"""\
help = "bookend test: a program, a kernel module and a unit, declared without Python"
executables = ["{PROGRAM}"]
modules = ["{MODULE}"]
units = ["{FEATURE_UNIT}"]
"""
FEATURE_UNIT_FILE = f"""\
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
FEATURE_HELPER_SCRIPT = (
    TOKEN_AND_PLACE
    + f"""\
module=absent
[ -d /sys/module/{MODULE} ] && module=loaded
encoded=$(printf %s "$token" | {PROGRAM})
echo "BOOKEND-FEATURE encoded=$encoded {MODULE}=$module in=$where" > /dev/kmsg
"""
)

# The exitrd's feature and extensions, each with a hook.
EXITRD_FEATURE = "demo-shutdown"
HOOK_DIR = "/usr/lib/systemd/system-shutdown"
FEATURE_HOOK = "/usr/libexec/bookend-demo/exitrd-hook"
# With the shell's builtins only: the exitrd holds what the closure found, no more.
HOOK_SCRIPT = (
    READ_TOKEN
    + """\
where=unknown
while IFS= read -r line; do
    case $line in VARIANT_ID=*) where=${line#VARIANT_ID=} ;; esac
done < /etc/initrd-release
where=${where#\\"}
echo "BOOKEND-EXITRD-HOOK LABEL token=$token verb=$1 in=${where%\\"}" > /dev/kmsg
"""
)
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
EXITRD_FEATURE_FILE = f"""\
help = "the test's own shutdown hook, for the exitrd only"

[exitrd]
shutdown_hooks = ["{FEATURE_HOOK}"]
purpose = "report from the exitrd"
"""
LABELS = ("feature-file", "directory-sysext", "squashfs-sysext-elf", "erofs-sysext")

PACKAGE_FILES = {
    f"/usr/lib/systemd/system/{ADDED_UNIT}": (ADDED_UNIT_FILE, 0o644),
    ADDED_HELPER: (ADDED_HELPER_SCRIPT, 0o755),
    "/etc/default/bookend-demo": ("BOOKEND_DEMO_MARK=from-environment-file\n", 0o644),
    "/etc/bookend-demo.conf": ("# its presence lets the unit start\n", 0o644),
    f"/usr/lib/systemd/system/{FEATURE_UNIT}": (FEATURE_UNIT_FILE, 0o644),
    FEATURE_HELPER: (FEATURE_HELPER_SCRIPT, 0o755),
    FEATURE_HOOK: (HOOK_SCRIPT.replace("LABEL", "feature-file"), 0o755),
}


@dataclass(frozen=True)
class Built:
    """The images, and what their build was given and said."""

    sysroot: Path
    kver: str
    features: Path  # the --feature-dir
    initrd: Path
    exitrd: Path
    stderr: str


@dataclass(frozen=True)
class Ran:
    """The one boot: its token, and the console before and from the pivot."""

    token: str
    before: str
    pivoted: str


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Debian 13 tree with the test packages' files."""
    copy = tmp_path_factory.mktemp("additions") / "sysroot"
    with tree_with_files(ensure_trixie_sysroot(), copy, PACKAGE_FILES) as root:
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
    squashfs_of(elf, squashfs)

    erofs_tree = extension_tree(directory, "demo-erofs", matching)
    hook = HOOK_SCRIPT.replace("LABEL", "erofs-sysext")
    put_file(erofs_tree, f"{HOOK_DIR}/demo-erofs", hook, 0o755)
    erofs = directory / "demo-erofs.raw"
    subprocess.run(["mkfs.erofs", "--all-root", "--quiet", str(erofs), str(erofs_tree)], check=True)
    return [plain, squashfs, erofs]


@pytest.fixture(scope="module")
def built(sysroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One initrd with the added unit and the feature file's feature, and its exitrd with
    the exitrd's feature and the three extensions."""
    kver = newest_kernel(sysroot)
    assert kver is not None
    directory = tmp_path_factory.mktemp("additions-images")
    features = directory / "features"
    put_file(features, f"/{FEATURE}.toml", FEATURE_FILE)
    put_file(features, f"/{EXITRD_FEATURE}.toml", EXITRD_FEATURE_FILE)
    extensions = make_extensions(sysroot, directory / "extensions")
    initrd = directory / "initrd.img"
    exitrd = directory / "exitrd" / "exitrd.img"
    exitrd.parent.mkdir()
    sysext_flags = [flag for path in extensions for flag in ("--exitrd-sysext", str(path))]
    result = bookend("build", "--sysroot", str(sysroot), "--kver", kver, "-o", str(initrd),
                     "--exitrd-output", str(exitrd), "--add-unit", ADDED_UNIT,
                     "--feature-dir", str(features), "--add-feature", FEATURE,
                     "--exitrd-add-feature", EXITRD_FEATURE, *sysext_flags,
                     *QEMU_VIRTIO_EXT4, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Built(sysroot, kver, features, initrd, exitrd, result.stderr)


@pytest.fixture(scope="module")
def ran(built: Built, root_disk: RootDisk, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """The boot into the bookworm root and its power-off through the exitrd."""
    directory = tmp_path_factory.mktemp("additions-boot")
    job = install_exitrd_job(directory / "job.img", built.exitrd.parent)
    log = directory / "console.log"
    options = BootOptions(kernel=built.sysroot / f"boot/vmlinuz-{built.kver}",
                          initrd=built.initrd, disks=(root_disk.image, job),
                          append=f"root=UUID={root_disk.uuid} rw", timeout=BOOT_LIMIT,
                          log_path=log)  # fmt: skip
    text = shutdown_through(options)
    print(f"console: {log}")
    report = re.search(r"BOOKEND-TOKEN (\w+) booted-with-initrd", text)
    assert report, "no report of the boot's token"
    before, pivoted = split_at_pivot(text)
    return Ran(report.group(1), before, pivoted)


def test_added_unit_runs_in_the_initrd_with_its_program_and_environment(
    built: Built, ran: Ran
) -> None:
    assert ADDED_UNIT not in built.stderr  # meant for the initrd: no warning about it
    why = bookend("why", str(built.initrd), ADDED_HELPER).stdout
    assert why.rstrip().endswith(f"units (command line): {ADDED_UNIT}"), why
    line = rf"BOOKEND-UNIT from-environment-file token={ran.token} in=initrd\s"
    assert re.search(line, ran.before), ran.before[-3000:]


def test_feature_file_brings_a_program_a_module_and_a_unit_that_work(
    built: Built, ran: Ran
) -> None:
    assert FEATURE_UNIT not in built.stderr  # meant for the initrd: no warning about it
    feature_file = built.features / f"{FEATURE}.toml"
    reason = f"feature {FEATURE} ({feature_file})"
    unit_reason = f"{reason}: {FEATURE_UNIT}"
    module_file = f"/usr/lib/modules/{built.kver}/kernel/net/ipv4/{MODULE}.ko.xz"
    for path, expected in (
        (PROGRAM, f"{PROGRAM} <- {reason}"),
        (module_file, f"{module_file} <- module {MODULE} <- {reason}"),
        (f"/usr/lib/systemd/system/{FEATURE_UNIT}", f"{FEATURE_UNIT} <- {unit_reason}"),
        (FEATURE_HELPER, f"<- Exec of /usr/lib/systemd/system/{FEATURE_UNIT} <- {unit_reason}"),
        (f"/etc/systemd/system/initrd.target.wants/{FEATURE_UNIT}", f"<- {unit_reason}"),
    ):
        why = bookend("why", str(built.initrd), path).stdout.rstrip()
        assert why.endswith(expected), why

    # `bookend plan --why` gives the same chain before any image is built.
    planned = bookend("plan", "--sysroot", str(built.sysroot), "--kver", built.kver,
                      "--feature-dir", str(built.features), "--add-feature", FEATURE,
                      *QEMU_VIRTIO_EXT4, "--why", FEATURE_HELPER).stdout  # fmt: skip
    assert planned.rstrip().endswith(f"<- {unit_reason}"), planned

    encoded = base64.b64encode(ran.token.encode()).decode()
    line = rf"BOOKEND-FEATURE encoded={re.escape(encoded)} {MODULE}=loaded in=initrd\s"
    assert re.search(line, ran.before), ran.before[-3000:]


def test_feature_and_extension_hooks_run_in_the_exitrd_after_the_pivot(
    built: Built, ran: Ran
) -> None:
    why = bookend("why", str(built.exitrd), FEATURE_HOOK).stdout
    origin = built.features / f"{EXITRD_FEATURE}.toml"
    assert why.rstrip().endswith(f"shutdown hook of feature {EXITRD_FEATURE} ({origin})"), why
    assert "BOOKEND-EXITRD-HOOK" not in ran.before  # only the exitrd has these hooks
    ends = []
    for label in LABELS:
        line = re.search(rf"BOOKEND-EXITRD-HOOK {label} token={ran.token} verb=poweroff "
                         rf"in=bookend-exitrd\s", ran.pivoted)  # fmt: skip
        assert line, f"no line of the {label} hook after the pivot:\n{ran.pivoted[-3000:]}"
        ends.append(line.end())
    # ... and all of them before the power-off itself.
    power_off = re.search(r"Powering off|reboot: Power down", ran.pivoted[max(ends) :])
    assert power_off, ran.pivoted[-2000:]
