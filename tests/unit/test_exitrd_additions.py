"""What extends the exitrd: features' shutdown hooks and files, exitrd_files,
exitrd_features and system extensions (bookend.sysext), and every way they go wrong."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.cli import vocabularies
from bookend.closure import Closure, build_closure
from bookend.config import Config
from bookend.errors import ConfigError, SysrootError
from bookend.exitrd import make_exitrd_plan
from bookend.features import ALL
from bookend.features.base import Feature
from bookend.features.datafiles import load_features
from bookend.plan import Plan
from bookend.resolve import configure
from bookend.sysext import release_mismatch
from tests.unit.elftree import compile_c, install_libc, shared_library

HOOK_DIR = "/usr/lib/systemd/system-shutdown"
HOOK = '#!/bin/sh\necho "demo hook $1" > /dev/kmsg\n'
FEATURE = """\
help = "the demo device's shutdown logic"

[exitrd]
files = ["/etc/demo-shutdown.conf", "?/etc/demo-absent.conf"]
shutdown_hooks = ["demo.shutdown", "/usr/libexec/demo/exitrd-hook", "?absent.shutdown"]
purpose = "take the demo device down"
"""
RELEASE = "ID=fixture\nSYSEXT_SCOPE=initrd\n"


def put(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    file = root / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    file.chmod(mode)
    return file


def exitrd_sysroot(root: Path) -> Path:
    """root_tree with what the exitrd itself brings: systemd-shutdown and a shell."""
    put(root, "/usr/lib/systemd/systemd-shutdown", "", 0o755)
    put(root, "/usr/bin/sh", "", 0o755)
    return root


def registry_with(tmp_path: Path, text: str = FEATURE) -> tuple[dict[str, Feature], Path]:
    path = put(tmp_path / "features", "demo.toml", text)
    return load_features(tmp_path / "no-root", [tmp_path / "features"], ALL), path


def config_of(values: dict[str, object], registry: dict[str, Feature] | None = None) -> Config:
    return configure(None, values, vocabularies(registry or ALL))


def exitrd_closure(config: Config, registry: dict[str, Feature], unpack: Path) -> Closure:
    initrd = Plan(features=(), requests=(), generated=(), registry=registry)
    return build_closure(config, make_exitrd_plan(config, initrd, unpack))


def test_feature_files_shutdown_hooks_and_files_go_into_the_exitrd(
    root_tree: Path, tmp_path: Path
) -> None:
    root = exitrd_sysroot(root_tree)
    put(root, f"{HOOK_DIR}/demo.shutdown", HOOK, 0o755)
    put(root, "/usr/libexec/demo/exitrd-hook", HOOK, 0o755)
    put(root, "/etc/demo-shutdown.conf", "x\n")
    registry, origin = registry_with(tmp_path)
    # The initrd has not got the feature: --exitrd-add-feature brings its exitrd part alone.
    config = config_of({"sysroot": str(root), "exitrd_features": ["demo"]}, registry)
    closure = exitrd_closure(config, registry, tmp_path / "unpack")
    entries = closure.entries
    assert f"{HOOK_DIR}/demo.shutdown" in entries
    link = entries[f"{HOOK_DIR}/exitrd-hook"].entry
    assert link.target == "/usr/libexec/demo/exitrd-hook"  # at its path, linked where it runs
    assert entries["/usr/libexec/demo/exitrd-hook"].entry.mode == 0o755
    assert "/etc/demo-shutdown.conf" in entries and "/etc/demo-absent.conf" not in entries
    assert f"{HOOK_DIR}/absent.shutdown" not in entries
    # The hook's interpreter is there (the exitrd's own holders hook asks for it first),
    # and why names the feature file.
    assert "/usr/bin/sh" in entries
    why = closure.format_why(f"{HOOK_DIR}/demo.shutdown")
    assert why.endswith(f"shutdown hook of feature demo ({origin})")
    assert closure.format_why("/etc/demo-shutdown.conf").endswith("take the demo device down")


def test_shutdown_hook_missing_or_not_executable_names_it(root_tree: Path, tmp_path: Path) -> None:
    root = exitrd_sysroot(root_tree)
    registry, _ = registry_with(tmp_path, 'help = "x"\n[exitrd]\nshutdown_hooks = ["demo.sh"]\n')
    config = config_of({"sysroot": str(root), "exitrd_features": ["demo"]}, registry)
    with pytest.raises(SysrootError, match=rf"{root}{HOOK_DIR}/demo.sh: missing \(exitrd: "):
        exitrd_closure(config, registry, tmp_path)
    put(root, f"{HOOK_DIR}/demo.sh", HOOK, 0o644)
    with pytest.raises(SysrootError, match=r"demo.sh: not executable"):
        exitrd_closure(config, registry, tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('files = ["etc/x"]', "exitrd.files: 'etc/x' is not an absolute path"),
        ("files = 1", "exitrd.files: expected a list of names, not the number 1"),
        ('shutdown_hooks = ["a/b"]', "exitrd.shutdown_hooks: 'a/b' is neither a file name in"),
        ('shutdown_hook = ["a"]', "exitrd.shutdown_hook: unknown key (did you mean"),
    ],
)
def test_bad_exitrd_table_is_one_line_naming_file_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        registry_with(tmp_path, f'help = "x"\n[exitrd]\n{table}\n')
    assert str(error.value).startswith(f"{tmp_path}/features/demo.toml: {message}")
    assert "\n" not in str(error.value)


def test_exitrd_add_file_is_in_the_exitrd_only(root_tree: Path, tmp_path: Path) -> None:
    root = exitrd_sysroot(root_tree)
    put(root, "/etc/shutdown-notes/a.txt", "a\n")
    config = config_of({"sysroot": str(root), "exitrd_files": ["/etc/shutdown-notes"]})
    closure = exitrd_closure(config, dict(ALL), tmp_path)
    assert closure.format_why("/etc/shutdown-notes/a.txt") == (
        "/etc/shutdown-notes/a.txt <- in directory /etc/shutdown-notes <- "
        "exitrd_files (command line)"
    )
    assert config.files == ()  # not the initrd's


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"exitrd_features": ["nbdd"]},
            "exitrd_features: unknown feature 'nbdd' (did you mean 'nbd'?)",
        ),
        (
            {"exitrd_files": ["/etc/absent"]},
            "exitrd_files: {root}/etc/absent: no such file or directory",
        ),
        ({"exitrd_files": ["etc/x"]}, "exitrd_files: 'etc/x' is not an absolute path"),
        (
            {"exitrd_sysexts": ["{tmp}/absent.raw"]},
            "exitrd_sysexts: {tmp}/absent.raw: no such file or directory",
        ),
    ],
)
def test_bad_exitrd_settings_are_one_line_naming_the_key(
    root_tree: Path, tmp_path: Path, values: dict[str, list[str]], message: str
) -> None:
    values = {k: [v.format(tmp=tmp_path) for v in vs] for k, vs in values.items()}
    with pytest.raises(ConfigError) as error:
        config_of({"sysroot": str(root_tree), **values})
    assert str(error.value) == "command line: " + message.format(root=root_tree, tmp=tmp_path)


def test_exitrd_feature_that_adds_nothing_is_refused(root_tree: Path, tmp_path: Path) -> None:
    config = config_of({"sysroot": str(exitrd_sysroot(root_tree)), "exitrd_features": ["release"]})
    with pytest.raises(ConfigError) as error:
        exitrd_closure(config, dict(ALL), tmp_path)
    assert str(error.value) == (
        "command line: exitrd_features: feature release declares nothing for the exitrd"
    )


def make_extension(directory: Path, name: str = "demo-ext", release: str = RELEASE) -> Path:
    tree = directory / name
    put(tree, f"/usr/lib/extension-release.d/extension-release.{name}", release)
    put(tree, f"{HOOK_DIR}/{name}.shutdown", HOOK, 0o755)
    put(tree, "/opt/demo/notes.txt", "from /opt\n")
    put(tree, "/etc/ignored.conf", "systemd-sysext merges only /usr and /opt\n")
    return tree


def pack(tree: Path, kind: str) -> Path:
    image = tree.with_name(tree.name + ".raw")
    tool = {"squashfs": "mksquashfs", "erofs": "mkfs.erofs"}[kind]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    argv = [tool, str(tree), str(image), "-quiet", "-no-progress", "-all-root"]
    if kind == "erofs":
        argv = [tool, "--all-root", str(image), str(tree)]
    subprocess.run(argv, check=True, capture_output=True)
    return image


@pytest.mark.parametrize("kind", ["directory", "squashfs", "erofs"])
def test_extension_merges_usr_and_opt_with_their_closure(
    root_tree: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = exitrd_sysroot(root_tree)
    tree = make_extension(tmp_path / "ext")
    extension = tree if kind == "directory" else pack(tree, kind)
    config = config_of({"sysroot": str(root), "exitrd_sysexts": [str(extension)]})
    with caplog.at_level(logging.WARNING):
        closure = exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    hook = closure.entries[f"{HOOK_DIR}/demo-ext.shutdown"]
    assert hook.entry.mode == 0o755 and hook.reason.startswith("exitrd_sysexts (command line)")
    assert hook.entry.source is not None and hook.entry.source.read_text() == HOOK
    assert "/opt/demo/notes.txt" in closure.entries
    assert "/usr/lib/extension-release.d/extension-release.demo-ext" in closure.entries
    assert "/etc/ignored.conf" not in closure.entries
    assert "left out: etc" in caplog.text
    # The hook's interpreter comes from the sysroot, as for any script; the exitrd's own
    # holders hook asks for the shell first, so its reason is the one recorded.
    assert closure.entries["/usr/bin/sh"].entry.source == root / "usr/bin/sh"


def test_extension_image_is_unpacked_once_per_version(root_tree: Path, tmp_path: Path) -> None:
    root = exitrd_sysroot(root_tree)
    image = pack(make_extension(tmp_path / "ext"), "squashfs")
    config = config_of({"sysroot": str(root), "exitrd_sysexts": [str(image)]})
    first = exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    again = exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    path = f"{HOOK_DIR}/demo-ext.shutdown"
    source = first.entries[path].entry.source
    assert source is not None and source == again.entries[path].entry.source
    assert os.stat(source).st_ino == os.stat(again.entries[path].entry.source or "").st_ino
    assert len(os.listdir(tmp_path / "unpack")) == 1


def test_extension_programs_find_libraries_in_the_extension_and_the_sysroot(
    root_tree: Path, tmp_path: Path
) -> None:
    root = exitrd_sysroot(root_tree)
    install_libc(root)
    multiarch = "/usr/lib/x86_64-linux-gnu"
    shared_library(root, multiarch, "libbase.so.1", "int base(void) { return 1; }")
    tree = make_extension(tmp_path / "ext")
    shared_library(tree, multiarch, "libext.so.1", "int ext(void) { return 2; }")
    libs = [f"-L{root}{multiarch}", f"-L{tree}{multiarch}", "-l:libbase.so.1", "-l:libext.so.1"]
    main = "int base(void); int ext(void); int main(void) { return base() + ext(); }"
    compile_c(main, tree / "usr/bin/demo-ext-tool", *libs)
    config = config_of({"sysroot": str(root), "exitrd_sysexts": [str(tree)]})
    closure = exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    base = closure.entries[f"{multiarch}/libbase.so.1.0"]
    assert base.entry.source == root / "usr/lib/x86_64-linux-gnu/libbase.so.1.0"
    ext = closure.entries[f"{multiarch}/libext.so.1.0"]
    assert ext.entry.source == tree / "usr/lib/x86_64-linux-gnu/libext.so.1.0"
    assert f"{multiarch}/libc.so.6" in closure.entries
    assert "DT_NEEDED of /usr/bin/demo-ext-tool" in closure.format_why(f"{multiarch}/libbase.so.1")


@pytest.mark.parametrize(
    ("release", "message"),
    [
        ("ID=fixture\n", "SYSEXT_SCOPE is 'system portable'; the exitrd is an initrd"),
        ("ID=fixture\nSYSEXT_SCOPE=system\n", "SYSEXT_SCOPE is 'system'"),
        (
            "ID=debian\nSYSEXT_SCOPE=initrd\n",
            "ID=debian, but the exitrd's os-release says ID=fixture",
        ),
        ("SYSEXT_SCOPE=initrd\n", "ID=(none), but"),
        (
            "ID=fixture\nSYSEXT_SCOPE=initrd\nVERSION_ID=2\n",
            "VERSION_ID=2, but the exitrd's os-release says VERSION_ID=1",
        ),
        ("ID=fixture\nSYSEXT_SCOPE=initrd\n", "VERSION_ID=(none), but"),
        (
            "ID=fixture\nSYSEXT_SCOPE=initrd\nSYSEXT_LEVEL=2\n",
            "SYSEXT_LEVEL=2, but the exitrd's is 1.0",
        ),
        (
            "ID=fixture\nSYSEXT_SCOPE=initrd\nARCHITECTURE=arm64\n",
            "ARCHITECTURE=arm64, but the sysroot is x86-64",
        ),
    ],
)
def test_extension_that_does_not_match_is_one_line_naming_it(
    root_tree: Path, tmp_path: Path, release: str, message: str
) -> None:
    root = exitrd_sysroot(root_tree)
    (root / "usr/lib/os-release").write_text("ID=fixture\nVERSION_ID=1\n")
    if "SYSEXT_LEVEL" in release:
        (root / "usr/lib/os-release").write_text("ID=fixture\nVERSION_ID=1\nSYSEXT_LEVEL=1.0\n")
    if "ARCHITECTURE" in release:
        # The sysroot's architecture is read from systemd-shutdown's ELF header.
        compile_c("int main(void) { return 0; }", root / "usr/lib/systemd/systemd-shutdown")
        install_libc(root)
    tree = make_extension(tmp_path / "ext", release=release)
    config = config_of({"sysroot": str(root), "exitrd_sysexts": [str(tree)]})
    with pytest.raises(ConfigError) as error:
        exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    release_file = "usr/lib/extension-release.d/extension-release.demo-ext"
    assert str(error.value).startswith(f"{tree}: {release_file}: {message}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("release", "host"),
    [
        ({"ID": "_any", "SYSEXT_SCOPE": "initrd"}, {"ID": "debian", "VERSION_ID": "12"}),
        ({"ID": "debian", "SYSEXT_SCOPE": "system initrd", "VERSION_ID": "12"},
         {"ID": "debian", "VERSION_ID": "12"}),
        ({"ID": "debian", "SYSEXT_SCOPE": "initrd"}, {"ID": "ubuntu", "ID_LIKE": "debian"}),
        ({"ID": "arch", "SYSEXT_SCOPE": "initrd"}, {"ID": "arch"}),  # rolling: no VERSION_ID
        ({"ID": "fedora", "SYSEXT_SCOPE": "initrd", "SYSEXT_LEVEL": "2", "VERSION_ID": "1"},
         {"ID": "fedora", "SYSEXT_LEVEL": "2", "VERSION_ID": "40"}),
    ],
)  # fmt: skip
def test_extensions_systemd_would_merge_are_accepted(
    release: dict[str, str], host: dict[str, str]
) -> None:
    assert release_mismatch(release, host, "x86-64") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image" * 200, "not a system extension (a directory, or a squashfs or erofs"),
        (b"\0" * 512 + b"EFI PART" + b"\0" * 600, "a disk image with partitions"),
        (b"hsqs" + b"\0" * 2000, "not a readable squashfs image"),
    ],
)
def test_file_that_is_no_extension_image_is_one_line_naming_it(
    root_tree: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    image = tmp_path / "demo-ext.raw"
    image.write_bytes(content)
    config = config_of({"sysroot": str(exitrd_sysroot(root_tree)), "exitrd_sysexts": [str(image)]})
    with pytest.raises(ConfigError) as error:
        exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    assert str(error.value).startswith(f"{image}: {message}")
    assert "\n" not in str(error.value)


def test_directory_without_release_file_or_with_os_release(root_tree: Path, tmp_path: Path) -> None:
    root = exitrd_sysroot(root_tree)
    tree = make_extension(tmp_path / "ext")
    renamed = tree.rename(tmp_path / "ext" / "other-name")  # the release file names demo-ext
    config = config_of({"sysroot": str(root), "exitrd_sysexts": [str(renamed)]})
    with pytest.raises(
        ConfigError,
        match=rf"^{renamed}: not a system extension \(no usr/lib/"
        r"extension-release.d/extension-release.other-name\)$",
    ):
        exitrd_closure(config, dict(ALL), tmp_path / "unpack")
    put(tree := make_extension(tmp_path / "ext2"), "/usr/lib/os-release", "ID=fixture\n")
    config = config_of({"sysroot": str(root), "exitrd_sysexts": [str(tree)]})
    with pytest.raises(ConfigError, match="holds usr/lib/os-release"):
        exitrd_closure(config, dict(ALL), tmp_path / "unpack")


def test_cli_bad_extension_exits_2_and_writes_nothing(root_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "initrd.img"
    output.parent.mkdir()
    missing = tmp_path / "absent-ext"
    result = subprocess.run(
        [sys.executable, "-m", "bookend", "build", "--sysroot", str(root_tree), "--generic",
         "-o", str(output), "--exitrd-sysext", str(missing)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"command line: exitrd_sysexts: {missing}: no such file or directory" in result.stderr
    assert os.listdir(output.parent) == []


def test_extension_path_is_kept_whole(
    root_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_extension(tmp_path / "ext")
    monkeypatch.chdir(tmp_path)
    config = config_of({"sysroot": str(root_tree), "exitrd_sysexts": ["ext/demo-ext"]})
    assert config.exitrd_sysexts == (str(tmp_path / "ext/demo-ext"),)


def test_exitrd_shutdown_is_what_runs_the_hooks(root_tree: Path) -> None:
    """The exitrd's hooks run because its /shutdown is systemd-shutdown (or hands over
    to it with exec): a /shutdown of another kind would have to run HOOK_DIR itself."""
    config = config_of({"sysroot": str(exitrd_sysroot(root_tree))})
    plan = make_exitrd_plan(config, Plan(features=(), requests=(), generated=()))
    shutdown = next(g.entry for g in plan.generated if g.entry.path == "/shutdown")
    if shutdown.target is not None:
        assert "/" + shutdown.target.lstrip("/") == "/usr/lib/systemd/systemd-shutdown"
    else:
        assert b"exec /usr/lib/systemd/systemd-shutdown" in (shutdown.data or b"")
