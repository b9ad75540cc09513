"""A cached Debian root disk for the VM tests, built once per recipe.

The disk is a raw ext4 image with no partition table: a debootstrap'ed bookworm
turned into a filesystem by `mkfs.ext4 -d`, so building it needs neither loop
devices nor mounts. A unit in it reports the token the test put on the kernel
command line and powers the guest off, which is how a test proves a boot
succeeded. Another runs a job the host put on a disk labelled BOOKEND-JOB when
the command line has `bookend.job` (see harness/guestjob.py), so a test can
use tools the host lacks (device-mapper, a booted kernel) and read the results
back from that disk.

Building takes minutes, so the image is cached outside the repository under a
name derived from the recipe: changing the recipe builds a new disk. The Debian
mirror it is fetched from (harness/mirror.py) is no part of the recipe.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bookend.errors import BookendError
from bookend.proc import run
from harness.mirror import debian_mirror
from harness.timings import timed

CACHE_ENV = "BOOKEND_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/bookend-tests")
ROOT_UUID = "b00ce4d0-7e57-4b00-8000-00000000c0de"
ROOT_LABEL = "bookend-root"

REPORT_SCRIPT = """\
#!/bin/sh
# Tell the host which bookend.token this boot was given and whether the root
# was entered through an initrd, then power off so the host sees QEMU exit.
set -eu
set -f  # the command line is split into words below, never globbed
token=
rdinit=/init
for word in $(cat /proc/cmdline); do
    case "$word" in
        bookend.token=*) token=${word#bookend.token=} ;;
        rdinit=*) rdinit=${word#rdinit=} ;;
    esac
done
[ -n "$token" ] || exit 0
# systemd records when it ran in an initrd before switching root; the
# timestamp is 0 when there was no initrd or its init was not systemd.
case "$(systemctl show -P InitRDTimestampMonotonic)" in
    "" | 0) systemd_initrd=no ;;
    *) systemd_initrd=yes ;;
esac
# Any other initrd (e.g. initramfs-tools) shows in the kernel log: the kernel
# runs the initramfs's init only if the initrd has one, and otherwise mounts
# the root itself and runs the root's init.
initrd=$systemd_initrd
if [ "$initrd" = no ] && dmesg | grep -qF "Run $rdinit as init process"; then
    initrd=yes
fi
line="BOOKEND-TOKEN $token booted-with-initrd=$initrd systemd-initrd=$systemd_initrd"
echo "$line" > /dev/ttyS0
# With console=ttyS0 the console is the serial port: print the line only once.
grep -qw ttyS0 /sys/class/tty/console/active || echo "$line" > /dev/console
systemctl --no-block poweroff
"""

REPORT_UNIT = """\
[Unit]
Description=Report the bookend test token to the host and power off
# Start once everything multi-user.target pulls in has started, so the report
# also says "the boot finished". WantedBy= below would normally order the
# target after this unit too; systemd skips that implicit ordering when it
# would close a loop, so this After= creates no ordering cycle.
After=multi-user.target
ConditionKernelCommandLine=bookend.token

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bookend-test-report

[Install]
WantedBy=multi-user.target
"""


JOB_LABEL = "BOOKEND-JOB"

JOB_SCRIPT = f"""\
#!/bin/sh
# Run /job/run from the disk labelled {JOB_LABEL} and leave its exit status in
# /job/out/status, where the host reads it without booting (guestjob.py).
set -eu
disk=/dev/disk/by-label/{JOB_LABEL}
# A Requires= on the device would make every boot without a job disk wait for
# it, so wait here, which only job boots reach: udev may still be probing it.
udevadm wait --timeout=120 "$disk"
mount "$disk" /job
modules=no
if [ -d /job/modules ]; then
    # The root has no kernel modules; the job disk brings the booted kernel's,
    # for modprobe and for a bookend build that reads /lib/modules/KVER.
    mount --bind /job/modules /lib/modules
    modules=yes
fi
mkdir -p /job/out
status=0
(cd /job && exec ./run) || status=$?
echo "$status" > /job/out/status
echo "BOOKEND-JOB-STATUS $status"
sync
# udev may still be loading a module the job's work announced (a uevent's modprobe
# holds its file open): then detach the bind mount now and let it go when they finish.
[ "$modules" = no ] || umount /lib/modules || umount --lazy /lib/modules
umount /job
"""

JOB_UNIT = """\
[Unit]
Description=Run the bookend test job from the BOOKEND-JOB disk
ConditionKernelCommandLine=bookend.job
# The report powers the guest off, so it must wait for the job; it does not
# require it, so the token is reported whether or not the job succeeded.
Before=bookend-test-report.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bookend-test-job
# The job's output is the first thing to read when it fails.
StandardOutput=journal+console
Environment=HOME=/root
# Jobs may build images under emulation.
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class RootDisk:
    image: Path
    uuid: str
    label: str


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the disk's content; its hash names the cached image."""

    suite: str
    components: tuple[str, ...]
    include: tuple[str, ...]
    uuid: str
    label: str
    size_mib: int
    # (path in the root, content, mode)
    files: tuple[tuple[str, str, int], ...]
    # (path in the root, target)
    symlinks: tuple[tuple[str, str], ...]
    # Empty directories made in the root, e.g. mount points.
    directories: tuple[str, ...]
    # Enablement symlinks removed: timers and services a short test boot never
    # needs, which only cost time under emulation.
    disabled: tuple[str, ...]
    # Bump when a build step changes in a way the fields above do not show.
    revision: int = 2

    def key(self) -> str:
        encoded = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]


# What every root disk has: systemd, the tools a job uses, and Python for jobs that
# run bookend itself from the job disk (with the suite's own libraries).
BASE_PACKAGES = (
    *("systemd-sysv", "udev", "kmod", "e2fsprogs", "util-linux", "fdisk"),
    # On every real Debian install; without it /etc/sysctl.d/99-sysctl.conf
    # dangles, which a bookend build in the guest would trip over.
    "procps",
    *("python3", "python3-zstandard", "python3-lz4", "python3-pyelftools"),
    # python3-zstandard depends on virtual packages this one provides,
    # and debootstrap does not resolve virtual packages.
    "python3-cffi-backend",
)
# Only the bookworm disk, whose jobs make the block stacks and filesystems the host
# kernel cannot, and build images with early microcode as on real installs.
STACK_PACKAGES = (
    *("cryptsetup-bin", "dmsetup", "lvm2", "mdadm", "btrfs-progs"),
    *("dosfstools", "xfsprogs"),
    *("amd64-microcode", "intel-microcode"),
)
# Timers and services a short test boot never needs, which only cost time under
# emulation; every suite's packages enable these.
BASE_DISABLED = (
    "timers.target.wants/apt-daily.timer",
    "timers.target.wants/apt-daily-upgrade.timer",
    "timers.target.wants/dpkg-db-backup.timer",
    "timers.target.wants/fstrim.timer",
)
# e2fsprogs' periodic check of LVM snapshots, and its cleanup at boot.
E2SCRUB_DISABLED = (
    "timers.target.wants/e2scrub_all.timer",
    "multi-user.target.wants/e2scrub_reap.service",
)


def copy_of(image: Path | str, path: Path) -> Path:
    """A raw copy of a cached disk that a guest or server may write (never the cache
    itself), sharing blocks where it can and sparse where it cannot."""
    run(["cp", "--reflink=auto", "--sparse=always", str(image), str(path)])
    return path


def default_recipe() -> Recipe:
    """The Debian 12 (bookworm) disk most VM tests boot."""
    return Recipe(
        suite="bookworm",
        # non-free-firmware holds the CPU microcode packages.
        components=("main", "non-free-firmware"),
        include=(*BASE_PACKAGES, *STACK_PACKAGES),
        uuid=ROOT_UUID,
        label=ROOT_LABEL,
        size_mib=1536,
        files=root_files(),
        symlinks=root_symlinks(),
        directories=("job", "usr/lib/modules"),
        # In the order this recipe always had: its cached disk is named by a hash of it.
        disabled=(
            *BASE_DISABLED[:3],
            E2SCRUB_DISABLED[0],
            BASE_DISABLED[3],
            E2SCRUB_DISABLED[1],
            # dmeventd monitoring of LVM mirrors and snapshots, which scans every
            # disk at boot: a test boot has nothing to monitor. (mdadm's timers
            # hang off mdmonitor.service, masked above.)
            "sysinit.target.wants/lvm2-monitor.service",
        ),
    )


def trixie_recipe() -> Recipe:
    """A Debian 13 (trixie, systemd 257) disk: the same report and job units, none of
    the block-stack tools. Its tests boot trixie's kernel and an image built from a
    trixie tree (harness/ukisysroot.py). It has open-iscsi, as a real root on iSCSI
    would: its own iscsid units and open-iscsi.service run beside the initrd's iscsid."""
    return dataclasses.replace(
        default_recipe(),
        suite="trixie",
        components=("main",),
        include=(*BASE_PACKAGES, "open-iscsi"),
        disabled=(*BASE_DISABLED, *E2SCRUB_DISABLED),
    )


def root_files(uuid: str = ROOT_UUID) -> tuple[tuple[str, str, int], ...]:
    """The test units and the root's own files; fstab names the disk's filesystem by uuid
    (a line naming another disk fails systemd-remount-fs: mount -o remount / looks the
    fstab source up)."""
    hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tbookend-test\n::1\tlocalhost ip6-localhost\n"
    return (
        ("etc/fstab", f"UUID={uuid} / ext4 errors=remount-ro 0 1\n", 0o644),
        ("etc/hostname", "bookend-test\n", 0o644),
        ("etc/hosts", hosts, 0o644),
        ("usr/local/sbin/bookend-test-report", REPORT_SCRIPT, 0o755),
        ("etc/systemd/system/bookend-test-report.service", REPORT_UNIT, 0o644),
        ("usr/local/sbin/bookend-test-job", JOB_SCRIPT, 0o755),
        ("etc/systemd/system/bookend-test-job.service", JOB_UNIT, 0o644),
    )


def root_symlinks() -> tuple[tuple[str, str], ...]:
    return (
        ("etc/systemd/system/default.target", "/lib/systemd/system/multi-user.target"),
        (
            "etc/systemd/system/multi-user.target.wants/bookend-test-report.service",
            "/etc/systemd/system/bookend-test-report.service",
        ),
        (
            "etc/systemd/system/multi-user.target.wants/bookend-test-job.service",
            "/etc/systemd/system/bookend-test-job.service",
        ),
        # udev starts mdadm's monitor for every array a job assembles; with
        # no mail transport its alerts go nowhere, so mask it.
        ("etc/systemd/system/mdmonitor.service", "/dev/null"),
        # python3.11-minimal registers .pyc files with binfmt_misc, a module
        # the root lacks: mounting it would fail every boot. No test needs it.
        ("etc/systemd/system/systemd-binfmt.service", "/dev/null"),
    )


def cache_dir_default() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def ensure_root_disk(
    cache_dir: Path | None = None, recipe: Recipe | None = None, what: str = "root disk"
) -> RootDisk:
    """The cached root disk for recipe, built first if no finished one exists; what
    names it in the run's timings (another recipe is another disk)."""
    recipe = recipe or default_recipe()
    cache_dir = cache_dir or cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = recipe.key()
    image = cache_dir / f"root-{key}.img"
    # The bookworm disk keeps its plain name in the run's report; others name their suite.
    what = "root disk" if recipe.suite == default_recipe().suite else f"root disk ({recipe.suite})"
    made_once(what, image, cache_dir / f"root-{key}.lock", key,
              lambda: build_root_disk(recipe, image, key))  # fmt: skip
    return RootDisk(image=image, uuid=recipe.uuid, label=recipe.label)


def made_once(what: str, result: Path, lock: Path, key: str, make: Callable[[], None]) -> None:
    """Call make() to make result (a cached disk, tree or set, keyed by key) unless a
    finished one exists; what names it in the run's timings."""
    with timed(what) as outcome:
        if not result.exists():
            # Another pytest process may be making the same: wait for it rather than
            # make it twice, then look again.
            outcome.how = "waited"
            with locked(lock):
                if not result.exists():
                    outcome.how = "made"
                    remove_stale_builds(result.parent, key)
                    make()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    # flock is released by the kernel if the holder dies, so a crash never
    # leaves a lock that blocks the next run.
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bookend tests: waiting for the build holding {path}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def building(result: Path, key: str) -> Iterator[Path]:
    """A private directory beside result to make it in, renamed to result when the block
    ends and removed if it fails: a half-made set is never found as a finished one."""
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=result.parent))
    try:
        yield work
        work.rename(result)
    except BaseException:
        remove_tree(work)
        raise


def remove_stale_builds(cache_dir: Path, key: str) -> None:
    """Delete what interrupted builds of this recipe left; call only holding its lock.

    Builds of other recipes are left alone: another process may be running one.
    """
    for leftover in cache_dir.glob(f".build-{key}-*"):
        try:
            remove_tree(leftover)
        except (OSError, BookendError) as error:
            # A debootstrap orphaned by a killed test run may still be writing
            # there; our build uses its own directory, so leave it for next time.
            print(f"bookend tests: cannot remove {leftover} yet: {error}", flush=True)


def build_root_disk(recipe: Recipe, image: Path, key: str) -> None:
    """Build in a private directory and rename into place, so image is whole or absent."""
    started = time.monotonic()
    print(f"bookend tests: building root disk {image} (a few minutes)", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=image.parent))
    try:
        tree = work / "root"
        bootstrap(recipe, tree)
        customize(recipe, tree)
        make_filesystem(recipe, tree, work / "disk.img")
        os.replace(work / "disk.img", image)
    finally:
        remove_tree(work)
    print(f"bookend tests: root disk built in {time.monotonic() - started:.0f} s", flush=True)


def bootstrap(recipe: Recipe, tree: Path, foreign_arch: str | None = None) -> None:
    """debootstrap recipe into tree; foreign_arch (e.g. "arm64") runs only the first
    stage for that architecture: packages unpacked or downloaded, nothing run."""
    # The one door for subprocesses scrubs the environment; a proxy the host
    # needs to reach the mirror must still get through.
    proxies = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy")}
    argv: list[str | Path] = ["debootstrap", "--variant=minbase"]
    if foreign_arch is not None:
        argv += ["--foreign", f"--arch={foreign_arch}"]
    argv += [f"--components={','.join(recipe.components)}"]
    argv += [f"--include={','.join(recipe.include)}", recipe.suite, tree, debian_mirror()]
    try:
        run(argv, env=proxies)
    except BookendError:
        # The error names debootstrap's log, which goes with the build
        # directory; show its end while it still exists.
        log = tree / "debootstrap/debootstrap.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print("\n".join(["bookend tests: end of debootstrap.log:", *tail]), flush=True)
        raise


def customize(recipe: Recipe, tree: Path) -> None:
    for relative, content, mode in recipe.files:
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    for relative, target in recipe.symlinks:
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(target)
    for relative in recipe.directories:
        (tree / relative).mkdir(parents=True, exist_ok=True)
    for relative in recipe.disabled:
        link = tree / "etc/systemd/system" / relative
        # A name that matches nothing would leave the unit it meant enabled.
        if not link.is_symlink():
            raise BookendError(f"recipe disables {relative}, which no package enabled")
        link.unlink()
    lock_root_account(tree)
    # Downloaded packages only make the image bigger.
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def lock_root_account(tree: Path) -> None:
    """Prefix root's password with "!" as `passwd -l` does, without running a chroot."""
    shadow = tree / "etc/shadow"
    lines = shadow.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and not fields[1].startswith("!"):
            fields[1] = "!" + fields[1]
            lines[index] = ":".join(fields)
    shadow.write_text("".join(lines))


def make_filesystem(recipe: Recipe, tree: Path, image: Path) -> None:
    with image.open("wb") as sparse:
        sparse.truncate(recipe.size_mib * 1024 * 1024)
    run(
        [
            "mkfs.ext4",
            "-q",
            "-d", tree,
            "-U", recipe.uuid,
            "-L", recipe.label,
            # Zero the inode tables and journal now; otherwise the guest's
            # ext4lazyinit thread does it at every boot, slowly, under emulation.
            "-E", "lazy_itable_init=0,lazy_journal_init=0",
            image,
        ]
    )  # fmt: skip


def remove_tree(path: Path) -> None:
    """rmtree, after unmounting what an interrupted debootstrap left mounted inside."""
    prefix = os.fspath(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    # /proc/self/mounts escapes spaces as \040; our temporary paths have none.
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        run(["umount", "--lazy", point])
    shutil.rmtree(path)
