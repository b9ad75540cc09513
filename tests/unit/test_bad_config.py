"""Bad configuration through the real CLI: one clear line, exit status 2, nothing written.

Each case is a TOML file and/or flags given to `bookend build`, with the source (the
file or "command line"), the key and a phrase the error must hold; the phrase carries
the suggestion where one makes sense.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.conftest import make_root_tree

KVER = "6.1.0-test"
TOML = "{toml}"  # stands for the case's TOML file in `source`
CLI = "command line"


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # TOML, CLI, or a path under the case's directory, e.g. "{tmp}/x"
    key: str  # "" for a whole-file problem (syntax, unreadable)
    phrase: str
    toml: str | bytes | None = None
    flags: tuple[str, ...] = ()


CASES = (
    # --- the TOML file itself
    Case("syntax", TOML, "", "not valid TOML: ", 'compress = "xz"\nmodules = ["a" "b"]\n'),
    Case("syntax-line", TOML, "", "(at line 2, column", 'compress = "xz"\nmodules = = 1\n'),
    Case("unclosed", TOML, "", "at end of document) after line 2", 'a = 1\nmodules = [\n'),
    Case("not-utf8", TOML, "", "not UTF-8 text (at line 2)", b'compress = "xz"\nkver = "\xff"\n'),
    Case("missing-file", "{tmp}/absent.toml", "", "no such configuration file",
         flags=("--config", "{tmp}/absent.toml")),
    Case("config-is-dir", "{tmp}", "", "is a directory", flags=("--config", "{tmp}")),
    # --- wrong types
    Case("string-for-list", TOML, "modules", "expected a list of strings, got the string 'ext4'",
         'modules = "ext4"\n'),
    Case("number-in-list", TOML, "files", "expected a list of strings", "files = ['/etc', 3]\n"),
    Case("list-for-scalar", TOML, "compress", "expected a string, got a list",
         'compress = ["xz"]\n'),
    Case("int-for-string", TOML, "kver", "expected a string, got the number 6", "kver = 6\n"),
    Case("date-for-string", TOML, "kver", "expected a string, got a date value",
         "kver = 2024-05-01\n"),
    Case("string-for-bool", TOML, "microcode", "expected true or false, got the string 'yes'",
         'microcode = "yes"\n'),
    Case("bool-for-int", TOML, "compress_level", "expected an integer, got true",
         "compress_level = true\n"),
    Case("float-for-int", TOML, "compress_level", "expected an integer, got the number 3.5",
         "compress_level = 3.5\n"),
    Case("table-for-list", TOML, "hooks", "expected a list of strings, got a table",
         '[hooks]\npre-mount = "echo hi"\n'),
    Case("empty-string", TOML, "root", "expected a non-empty string", 'root = ""\n'),
    Case("nul", TOML, "activation", "holds a NUL character", 'activation = "a\\u0000b"\n'),
    # --- unknown keys
    Case("unknown-key", TOML, "modulse", "unknown key (did you mean 'modules'?)",
         'modulse = ["ext4"]\n'),
    Case("unknown-table", TOML, "bookend.compress", "settings are top-level keys",
         '[bookend]\ncompress = "xz"\n'),
    Case("unknown-table-typo", TOML, "outpt", "unknown key (did you mean 'output'?)",
         "[outpt]\nx = 1\n"),
    # --- files that are not there
    Case("add-file", CLI, "files", "{sysroot}/etc/nope: no such file or directory",
         flags=("--add-file", "/etc/nope")),
    Case("keyfile", TOML, "keyfiles", "{sysroot}/etc/keys/root.key: no such file or directory",
         'keyfiles = ["/etc/keys/root.key"]\n'),
    Case("relative-file", CLI, "files", "'etc/hosts' is not an absolute path",
         flags=("--add-file", "etc/hosts")),
    # --- kernel modules and versions
    Case("module", CLI, "modules",
         f"no kernel module or alias 'virtio_blkk' in /lib/modules/{KVER} "
         "(did you mean 'virtio_blk'?)", flags=("--add-module", "virtio_blkk")),
    Case("module-in-toml", TOML, "modules", "no kernel module or alias 'ext5'",
         'modules = ["virtio_blk", "ext5"]\n'),
    Case("kver-typo", CLI, "kver", f"no modules for kernel '6.1.0-tst' in {{sysroot}}/lib/"
         f"modules (did you mean '{KVER}'?)", flags=("--kver", "6.1.0-tst")),
    Case("kver-unlike", CLI, "kver", f"(installed: {KVER})", flags=("--kver", "2.4.0")),
    Case("kver-no-modules", CLI, "kver", "has no modules.dep: run depmod 6.2.0-empty",
         flags=("--kver", "6.2.0-empty")),
    Case("kver-path", TOML, "kver", "'../../etc' is not a kernel version", 'kver = "../../etc"\n'),
    # --- the sysroot
    Case("sysroot-empty", CLI, "sysroot", "{tmp}/empty is not a root tree (no usr/ and etc/)",
         flags=("--sysroot", "{tmp}/empty")),
    Case("sysroot-file", CLI, "sysroot", "{tmp}/plain is not a directory",
         flags=("--sysroot", "{tmp}/plain")),
    Case("sysroot-missing", CLI, "sysroot", "{tmp}/gone does not exist",
         flags=("--sysroot", "{tmp}/gone")),
    Case("sysroot-too-long", CLI, "sysroot", "does not exist", flags=("--sysroot", "/x" * 3000)),
    # --- values
    Case("compress", TOML, "compress", "'zstdd' is not one of zstd, xz, gzip, lz4, none "
         "(did you mean 'zstd'?)", 'compress = "zstdd"\n'),
    Case("compress-level", CLI, "compress_level", "15 is not a xz level (0..9)",
         flags=("--compress", "xz", "--compress-level", "15")),
    Case("exitrd-compress-level", TOML, "exitrd_compress_level", "4 is not a none level (0..0)",
         'exitrd_compress = "none"\nexitrd_compress_level = 4\n'),
    Case("hook-point", CLI, "hooks", "unknown hook point 'pre-mout' (did you mean 'pre-mount'?)",
         flags=("--hook", "pre-mout=echo hi")),
    Case("hook-form", TOML, "hooks", "'echo hi' is not POINT=COMMAND", 'hooks = ["echo hi"]\n'),
    Case("emergency-shell", CLI, "emergency_shell", "(did you mean 'unlocked'?)",
         flags=("--emergency-shell", "unlockd")),
    Case("password", TOML, "emergency_shell", "a crypt(3) password hash",
         'emergency_shell = "hunter2"\n'),
    Case("feature", CLI, "features", "unknown feature 'lukss' (did you mean 'luks'?)",
         flags=("--add-feature", "lukss")),
    Case("driver-class", TOML, "driver_classes", "unknown driver class 'nvm' (did you mean "
         "'nvme'?)", 'driver_classes = ["nvm"]\n'),
    Case("daemon-form", CLI, "storage_daemons", "'../../x' is not a unit name",
         flags=("--add-storage-daemon", "../../x")),
    Case("daemon-missing", CLI, "storage_daemons", "unit iscsid.service not found in the sysroot",
         flags=("--add-storage-daemon", "iscsid.service")),
    Case("root-spaces", TOML, "root", "is not a device", 'root = "/dev/vda2 /home ext4"\n'),
    Case("filesystem-form", CLI, "filesystems", "is not a filesystem type",
         flags=("--filesystem", "ext4 defaults")),
    Case("sysfs", CLI, "sysfs", "{tmp}/nosys is not a directory",
         flags=("--hostonly", "--sysfs", "{tmp}/nosys")),
    Case("procfs", CLI, "procfs", "{tmp}/empty is not a procfs (no self/mountinfo)",
         flags=("--hostonly", "--procfs", "{tmp}/empty")),
    Case("devfs", CLI, "devfs", "{tmp}/nodev is not a directory",
         flags=("--hostonly", "--devfs", "{tmp}/nodev")),
    Case("config-root", CLI, "config_root", "{tmp}/noconf is not a directory",
         flags=("--config-root", "{tmp}/noconf")),
    # --- where to write
    Case("output-dir", CLI, "output", "directory {tmp}/nowhere does not exist",
         flags=("-o", "{tmp}/nowhere/initrd.img")),
    Case("output-too-long", CLI, "output", "file name too long (at most 234 bytes)",
         flags=("-o", "{tmp}/" + "x" * 240)),
    Case("exitrd-too-long", CLI, "output", "file name too long for the exitrd beside it",
         flags=("-o", "{tmp}/initrd-" + "x" * 225)),
    Case("output-is-dir", CLI, "output", "{tmp}/empty is a directory; name the image file",
         flags=("-o", "{tmp}/empty")),
    Case("exitrd-output-dir", TOML, "exitrd_output", "directory {tmp}/nowhere does not exist",
         'exitrd_output = "{tmp}/nowhere/exitrd.img"\n'),
)  # fmt: skip


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A sysroot with one module, an output directory, and the odd paths cases name."""
    sysroot = make_root_tree(tmp_path / "sysroot", KVER)
    (sysroot / f"usr/lib/modules/{KVER}/modules.dep").write_text(
        "kernel/drivers/block/virtio_blk.ko:\n"
    )
    (sysroot / "usr/lib/modules/6.2.0-empty").mkdir()  # a removed kernel's leftovers
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain").write_text("not a tree\n")
    for directory in ("out", "cwd", "conf"):
        (tmp_path / directory).mkdir()
    return {"tmp": tmp_path, "sysroot": sysroot}


def expand(text: str, layout: dict[str, Path], toml: Path) -> str:
    return text.format(tmp=layout["tmp"], sysroot=layout["sysroot"], toml=toml)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_configuration_is_one_line_exit_2_nothing_written(
    case: Case, layout: dict[str, Path]
) -> None:
    tmp = layout["tmp"]
    toml = tmp / "conf/bookend.toml"
    # An empty config root: the host's own drop-ins have no say in these tests.
    argv = ["build", "--config-root", str(tmp / "conf")]
    argv += [] if "--hostonly" in case.flags else ["--generic"]  # no host detection
    argv += ["--sysroot", str(layout["sysroot"]), "-o", f"{tmp}/out/i.img"]
    if case.toml is not None:
        data = case.toml if isinstance(case.toml, bytes) else expand(case.toml, layout, toml)
        toml.write_bytes(data if isinstance(data, bytes) else data.encode())
        argv += ["--config", str(toml)]
    argv += [expand(flag, layout, toml) for flag in case.flags]
    result = subprocess.run(
        [sys.executable, "-m", "bookend", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp / "cwd",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    source = expand(case.source, layout, toml)
    where = f"bookend: {source}: {case.key}: " if case.key else f"bookend: {source}: "
    assert lines[0].startswith(where), lines[0]
    assert expand(case.phrase, layout, toml) in lines[0]
    # Nothing written: no image, no exitrd, no digest, no temporary file.
    assert list((tmp / "out").iterdir()) == []
    assert list((tmp / "cwd").iterdir()) == []
