"""Run a job inside a booted guest and read its results back on the host.

The root disk (rootdisk.py) runs `/job/run` from a disk labelled BOOKEND-JOB
when the kernel command line has `bookend.job`, writes the job's exit status
to `/job/out/status`, then reports the test token and powers off as usual:

    disk = make_job_disk(tmp_path / "job.img", "#!/bin/sh\\nuname -r > /job/out/uname\\n")
    done = run_job(BootOptions(kernel=..., initrd=..., disks=(root.image, disk), append=...))
    assert done.status == 0 == job_status(disk.path)
    read_job_output(disk.path, "uname", tmp_path / "uname")

The job disk is ext4 made by `mkfs.ext4 -d` and read back by `debugfs`, so
neither side needs loop devices or mounts on the host. Read it only after QEMU
has exited: the guest writes to the file directly (the disk is not a snapshot).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from bookend.proc import run
from harness.qemu import Boot, BootOptions, Disk, boot
from harness.rootdisk import JOB_LABEL
from harness.token import EXIT_LIMIT, expect_token, new_token, with_token

MODULES_DIR = Path("/lib/modules")
# Room left free for what the job writes (images of tens of MB); the image
# file is sparse, so unused room costs the host nothing.
FREE_ROOM_MIB = 256
BLOCK = 4096
INODE_SIZE = 256
# Inodes beyond what the tree needs, for the files the job creates.
SPARE_INODES = 4096
# What the root's job unit prints with the job's exit status (rootdisk.py).
JOB_STATUS_WORD = "BOOKEND-JOB-STATUS"
# Console lines a failed job's message carries: its trace's end and the kernel's words.
FAILURE_LINES = 40
# Names the guest's job unit gives a meaning; files must not land on them.
RESERVED = ("run", "out", "modules")


def make_job_disk(
    path: Path,
    script: str,
    *,
    files: Mapping[str, Path] = {},
    modules_kver: str | None = None,
    size_mib: int | None = None,
) -> Disk:
    """Build the job disk at path: `run` (the script), an empty `out/`, files, modules.

    files maps a path relative to the disk's root to a host file or directory
    copied there (a directory's __pycache__ is left out). modules_kver copies
    /lib/modules/<kver>, which the guest binds onto its /lib/modules.
    """
    # The tree sits beside the image so modules can be hardlinked, not copied,
    # when both are on the filesystem holding /lib/modules.
    with tempfile.TemporaryDirectory(prefix=".job-tree-", dir=path.parent) as temporary:
        tree = Path(temporary)
        (tree / "run").write_text(script)
        (tree / "run").chmod(0o755)
        (tree / "out").mkdir()
        for relative, source in files.items():
            copy_in(source, tree / checked_relative(relative))
        if modules_kver is not None:
            copy_modules(MODULES_DIR / modules_kver, tree / "modules" / modules_kver)
        make_filesystem(tree, path, size_mib)
    return Disk(path, snapshot=False)


def checked_relative(relative: str) -> str:
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] in ("/", *RESERVED) or ".." in parts:
        raise ValueError(f"job disk path {relative!r}: must be relative, not in {RESERVED}")
    return relative


def copy_in(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        # Bytecode of the host's Python only takes room; the guest writes its own.
        shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(source, target)


def copy_modules(source: Path, target: Path) -> None:
    if not (source / "modules.dep").exists():
        raise FileNotFoundError(
            f"{source}: no modules.dep; is that kernel's modules package installed?"
        )
    # Hundreds of MB: a hardlink per file saves copying them twice (here and
    # into the image); across filesystems, copy instead.
    shutil.copytree(source, target, symlinks=True, copy_function=link_or_copy)


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_filesystem(tree: Path, image: Path, size_mib: int | None) -> None:
    blocks, inodes = 0, SPARE_INODES
    for entry in tree.rglob("*"):
        inodes += 1
        if entry.is_file() and not entry.is_symlink():
            blocks += -(-entry.stat().st_size // BLOCK)
        else:
            blocks += 1
    if size_mib is None:
        used = blocks * BLOCK + inodes * INODE_SIZE
        # Bitmaps, group descriptors and indirect blocks: a few percent.
        size_mib = -(-used * 21 // 20 // 2**20) + FREE_ROOM_MIB
    with image.open("wb") as sparse:
        sparse.truncate(size_mib * 2**20)
    run(
        [
            "mkfs.ext4", "-q", "-d", tree, "-L", JOB_LABEL,
            "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes),
            # No journal: the host reads the disk with debugfs, which does not
            # replay one; the guest syncs and unmounts before it powers off.
            "-O", "^has_journal", "-m", "0",
            # Zero the inode tables now, not in the guest's lazyinit thread.
            "-E", "lazy_itable_init=0",
            image,
        ]
    )  # fmt: skip


def read_job_output(disk: Path, relpath: str, dest: Path) -> Path:
    """Copy out/<relpath> from the job disk to dest, without mounting it; return dest."""
    source = PurePosixPath("/out") / relpath
    if relpath.startswith("/") or ".." in source.parts:
        raise ValueError(f"job output path {relpath!r}: must be relative to out/")
    # debugfs exits 0 even when the file is missing; it creates the output
    # only once it has found the file, so dump beside dest and rename.
    partial = dest.with_name(f".{dest.name}.partial")
    partial.unlink(missing_ok=True)
    _, complaints = debugfs(disk, f"dump -p {quoted(source)} {quoted(partial)}")
    if not partial.exists():
        raise FileNotFoundError(f"{disk}: cannot read {source} from the job disk: {complaints}")
    os.replace(partial, dest)
    return dest


def job_status(disk: Path) -> int:
    """The exit status of the job's `run`, as the guest recorded it."""
    status, complaints = debugfs(disk, "cat /out/status")
    if not status.strip().isdigit():
        raise FileNotFoundError(
            f"{disk}: the job recorded no status, so it did not finish (see the console): "
            f"{status.strip() or complaints}"
        )
    return int(status)


def quoted(path: PurePosixPath | Path) -> str:
    # debugfs splits its request at blanks outside double quotes, and has no
    # escape for a double quote itself.
    if '"' in str(path):
        raise ValueError(f"{path}: debugfs cannot take a path with a double quote")
    return f'"{path}"'


def debugfs(disk: Path, request: str) -> tuple[str, str]:
    """Run one debugfs request on disk, read-only: its output and its complaints."""
    result = run(["debugfs", "-R", request, disk])
    # stderr opens with debugfs's version banner; the rest says what went wrong.
    messages = result.stderr.decode(errors="replace").strip().splitlines()[1:]
    return result.stdout.decode(errors="replace"), " | ".join(messages)


@dataclass(frozen=True)
class JobRun:
    """A boot that ran its job and then reported its token."""

    status: int  # the job's exit status, as the guest printed it
    text: str  # the whole console
    seconds: float

    def why_failed(self, console_log: Path | None = None) -> str:
        """An assertion's message: the console's last lines up to the job's status, as a
        CI log keeps them when the console file is gone."""
        before, _, _ = self.text.partition(JOB_STATUS_WORD)
        tail = "\n".join(before.splitlines()[-FAILURE_LINES:])
        where = f" (console: {console_log})" if console_log else ""
        return f"the job failed with status {self.status}{where}; the console before:\n{tail}"


def run_job(
    options: BootOptions,
    *,
    on_the_way: Callable[[Boot], None] | None = None,
    exit_timeout: float = EXIT_LIMIT,
    exit_status: int = 0,
) -> JobRun:
    """Boot with `bookend.job` and a new token: the job runs, the root reports, QEMU exits 0.

    options.disks must hold the job disk (make_job_disk). on_the_way runs first with the
    running guest (e.g. to type a passphrase). exit_timeout: seconds from the token to
    QEMU's exit, longer for a shutdown that has work to do (an exitrd); exit_status:
    QEMU's, when the guest ends through isa-debug-exit.
    """
    token = new_token()
    job_options = with_token(replace(options, append=f"{options.append} bookend.job"), token)
    with boot(job_options) as vm:
        if on_the_way is not None:
            on_the_way(vm)
        printed = vm.expect(JOB_STATUS_WORD + r" (\d+)", timeout=options.timeout)
        # Searched only after the job's line: the report waits for the job.
        expect_token(vm, token, options.timeout, exit_timeout=exit_timeout,
                     exit_status=exit_status)  # fmt: skip
        return JobRun(status=int(printed.group(1)), text=vm.text, seconds=vm.elapsed)
