"""Each stage's output is plain data the next one takes, and what is printed is what is
written: the exitrd's digest (sealed from the exitrd's closure, its entries and their
sources) and its carried tree are in the initrd's closure, so `bookend plan --closure`
lists them and the digest is the written exitrd's; boot-test's image settings are a
layer of the configuration of their own, not a change to the parsed arguments."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bookend import build, cli
from bookend.archive import ArchiveEntry, EntryKind
from bookend.boottest.run import BOOT_TEST, SHARE_FEATURE, image_settings
from bookend.build import build_initrd, write_image
from bookend.closure import Closure, ClosureEntry
from bookend.config import Config
from bookend.errors import ArchiveError
from bookend.exitrd_store import CARRIED, DIGEST_CONF, named_digest, seal_entries, seal_image
from bookend.inspect.extract import extract_image
from bookend.inspect.image import scan_image
from bookend.plan import Plan
from bookend.scancache import ScanCache
from tests.unit.conftest import load_config, make_root_tree, stand_in_plan
from tests.unit.elftree import install_libc

KVER = "6.1.0-test"
SCRIPT = "#!/bin/sh\nexec true\n"
ODD = "/usr/share/odd"  # a directory of the sysroot the exitrd takes whole
# Stand-ins for the features' programs, which a fixture tree has not got: systemd a
# script (its #! brings the shell, the shell its libraries), and systemd-tmpfiles,
# which the exitrd's digest unit runs.
PLAN = stand_in_plan("/usr/bin/systemd-tmpfiles")


def script(root: Path, path: str, text: str = SCRIPT, mode: int = 0o755) -> None:
    file = root / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    file.chmod(mode)


def make_odd_directory(root: Path) -> None:
    """What the seal must read right: modes beyond 0755/0644, an empty file, links
    relative and absolute, a private directory, a name with a space."""
    script(root, f"{ODD}/setuid", mode=0o4755)
    script(root, f"{ODD}/private", "secret-ish\n", 0o600)
    script(root, f"{ODD}/empty", "", 0o644)
    script(root, f"{ODD}/with space", "x\n", 0o640)
    script(root, f"{ODD}/closed/inner", "inner\n", 0o444)
    (root / ODD.lstrip("/") / "closed").chmod(0o700)
    (root / ODD.lstrip("/") / "relative").symlink_to("private")
    (root / ODD.lstrip("/") / "absolute").symlink_to(f"{ODD}/empty")


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """The configurations the fixture's plan was made for, in order."""
    configs: list[Config] = []

    def fixture_plan(config: Config, cache: object = None, registry: object = None) -> Plan:
        configs.append(config)
        return PLAN

    monkeypatch.setattr(build, "make_plan", fixture_plan)  # what build calls
    monkeypatch.setattr("bookend.plan.make_plan", fixture_plan)  # what plan imports
    return configs


@pytest.fixture
def sysroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planned: list[Config]) -> Path:
    root = make_root_tree(tmp_path / "sysroot", KVER)
    install_libc(root)
    shutil.copy("/usr/bin/dash", root / "usr/bin/dash")
    (root / "usr/bin/sh").symlink_to("dash")
    for path in ("/usr/lib/systemd/systemd", "/usr/lib/systemd/systemd-shutdown",
                 "/usr/bin/systemd-tmpfiles"):  # fmt: skip
        script(root, path)
    make_odd_directory(root)
    monkeypatch.setenv("BOOKEND_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return root


def flags(sysroot: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "conf").mkdir(exist_ok=True)  # no drop-ins or feature files of this host
    return ["--sysroot", str(sysroot), "--kver", KVER, "--config-root", str(tmp_path / "conf"),
            "--exitrd-in-initrd", "--exitrd-add-file", ODD]  # fmt: skip


def test_the_digest_sealed_from_the_closure_is_the_written_exitrds(
    sysroot: Path, tmp_path: Path
) -> None:
    values = {"sysroot": str(sysroot), "kver": KVER, "output": str(tmp_path / "initrd.img"),
              "exitrd_files": [ODD]}  # fmt: skip
    result = build_initrd(load_config(None, values), ScanCache(None))
    assert result.exitrd is not None
    exitrd = result.exitrd.closure
    sealed = seal_entries([*exitrd.early, *exitrd.archive_entries()], "the closure")
    assert sealed == seal_image(result.exitrd.path)  # listing, sums and paths alike
    listing = sealed.listing.decode()
    for line in ("89ed ./setuid", "8180 ./private", "41c0 ./closed",
                 "a1ff ./relative -> private", f"a1ff ./absolute -> {ODD}/empty",
                 "81a0 ./with space"):  # fmt: skip
        assert line.replace("./", f".{ODD}/", 1) in listing.splitlines(), line
    # The initrd written names that digest.
    extract_image(result.initrd.path, tmp_path / "initrd", [DIGEST_CONF])
    conf = (tmp_path / "initrd" / DIGEST_CONF.lstrip("/")).read_bytes()
    assert named_digest(conf) == sealed.digest


def test_the_seal_of_entries_is_the_seal_of_their_image(root_tree: Path, tmp_path: Path) -> None:
    """What write_cpio leaves out (the root) or the seal hides (device nodes), and the
    directories the kernel makes for a deeper entry, as the image's seal sees them."""
    source = tmp_path / "program"
    source.write_bytes(b"\x7fELF not really")
    entries = (
        ArchiveEntry("/", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/dev", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/dev/console", EntryKind.CHAR_DEVICE, 0o600, rdev=os.makedev(5, 1)),
        ArchiveEntry("/deep/er/file", EntryKind.FILE, 0o600, data=b"no parents listed"),
        ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o711),
        ArchiveEntry("/usr/bin", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/usr/bin/su", EntryKind.FILE, 0o104755, source=source),
        ArchiveEntry("/bin", EntryKind.SYMLINK, 0o777, target="usr/bin"),
    )
    output = tmp_path / "exitrd.img"
    config = load_config(None, {"sysroot": str(root_tree), "output": str(output)})
    write_image(config, Closure({e.path: ClosureEntry(e, "t", None) for e in entries}))
    assert seal_entries(entries, "t") == seal_image(output)
    with pytest.raises(ArchiveError, match="a name the shell loader cannot check"):
        seal_entries([ArchiveEntry("/a\nb", EntryKind.FILE, 0o644, data=b"")], "t")


def closure_lines(output: str) -> set[tuple[str, str, str]]:
    """(kind, mode, path) of each line `plan --closure` prints."""
    found = set()
    for line in output.splitlines():
        kind, mode, rest = line.split(None, 2)
        path = rest.rsplit("  [", 1)[0].split(" -> ", 1)[0]
        found.add((kind, mode, path))
    return found


def test_plan_closure_prints_what_build_writes(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plan", *flags(sysroot, tmp_path), "--closure"]) == 0
    printed = closure_lines(capsys.readouterr().out)
    output = tmp_path / "initrd.img"
    assert cli.main(["build", *flags(sysroot, tmp_path), "-o", str(output)]) == 0
    capsys.readouterr()
    final = scan_image(output).final().values()
    written = {(entry.kind, f"{entry.mode:04o}", f"/{entry.path}") for entry in final}
    assert printed == written
    paths = {path for _, _, path in printed}
    assert {DIGEST_CONF, "/usr/lib/systemd/system/bookend-exitrd-digest.service",
            f"{CARRIED}/shutdown", f"{CARRIED}{ODD}/private"} <= paths  # fmt: skip
    assert not any(path.startswith(f"{CARRIED}/dev/") for path in paths)  # no device nodes
    assert cli.main(["plan", *flags(sysroot, tmp_path), "--why", f"{CARRIED}{ODD}/private"]) == 0
    why = capsys.readouterr().out
    assert "exitrd_in_initrd: the exitrd, copied to /run/initramfs at boot" in why


def test_an_exitrd_file_changed_after_its_seal_stops_the_build(
    sysroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exitrd's files are read twice, for the seal and for the image: one changed
    in between would make the loader refuse the exitrd at shutdown; nothing is written."""
    from bookend.closure import with_exitrd as sealed

    def then_changed(initrd: Closure, exitrd: Closure, config: Config) -> Closure:
        joined = sealed(initrd, exitrd, config)
        (sysroot / ODD.lstrip("/") / "private").write_text("changed!!!\n")
        return joined

    monkeypatch.setattr(build, "with_exitrd", then_changed)
    output = tmp_path / "initrd.img"
    values = {"sysroot": str(sysroot), "kver": KVER, "output": str(output), "exitrd_files": [ODD]}
    with pytest.raises(ArchiveError, match="its files changed while it was written"):
        build_initrd(load_config(None, values), ScanCache(None))
    assert not output.exists() and not (tmp_path / f"exitrd.img-{KVER}").exists()


def test_boot_test_asks_for_its_image_settings_in_a_layer_of_its_own(
    root_tree: Path, tmp_path: Path
) -> None:
    values = {"sysroot": str(root_tree), "features": ["debug"], "output": str(tmp_path / "i")}
    (tmp_path / "scratch").mkdir()
    added = image_settings(values, tmp_path / "scratch", share=True)
    assert added[0] == BOOT_TEST
    config = load_config(None, values, added=[added])
    assert config.features == ("debug", SHARE_FEATURE)
    assert config.origin_of("features", 1) == BOOT_TEST
    assert config.origin_of("features", 0) == "command line"
    assert config.exitrd and config.exitrd_in_initrd and "virtio" in config.driver_classes
    assert config.output == tmp_path / "i"  # given: kept
    assert config.exitrd_output == tmp_path / "scratch/exitrd.img"
    on_a_disk = load_config(None, values, added=[image_settings(values, tmp_path, share=False)])
    assert SHARE_FEATURE not in on_a_disk.features


def test_boot_test_builds_without_changing_its_parsed_arguments(
    sysroot: Path, tmp_path: Path, planned: list[Config]
) -> None:
    args = cli.make_parser().parse_args(["boot-test", *flags(sysroot, tmp_path)])
    before = dict(vars(args))
    (tmp_path / "scratch").mkdir()
    image, kernel, root = cli._build_for_boot_test(args, tmp_path / "scratch", True)
    assert vars(args) == before
    assert image == tmp_path / "scratch/initrd.img" and image.is_file()
    assert kernel is None and root == sysroot  # the fixture tree has no /boot/vmlinuz-KVER
    config = planned[-1]
    assert SHARE_FEATURE in config.features and config.exitrd_in_initrd
