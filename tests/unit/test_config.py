from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bookend.archive.compress import Compression
from bookend.cli import make_parser
from bookend.config import SETTINGS, EmergencyAccess, ModuleMode
from bookend.errors import ConfigError
from tests.unit.conftest import load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def known_modules(root: Path, *names: str, kver: str = "6.1.0-test") -> None:
    """A modules.dep naming these modules, so the configuration accepts them."""
    lines = "".join(f"kernel/{name}.ko:\n" for name in names)
    (root / f"usr/lib/modules/{kver}/modules.dep").write_text(lines)


def test_defaults_pick_newest_kernel_and_a_safe_output(root_tree: Path, tmp_path: Path) -> None:
    for kver in ("6.10.0-test", "6.9.12-test"):
        (root_tree / f"usr/lib/modules/{kver}").mkdir()
        (root_tree / f"usr/lib/modules/{kver}/modules.dep").write_text("")
    # What a removed kernel leaves behind is no kernel to build for, however new.
    (root_tree / "usr/lib/modules/6.11.0-removed").mkdir()
    config = load_config(None, {"sysroot": str(root_tree)}, cwd=lambda: tmp_path)
    assert config.kver == "6.10.0-test"
    # Never the distribution's own /boot/initrd.img-KVER by surprise.
    assert config.output == tmp_path / "bookend-initrd-6.10.0-test.img"
    assert config.compress is Compression.ZSTD
    assert config.emergency_access is EmergencyAccess.LOCKED


def test_file_then_flags_scalars_replace_lists_extend(root_tree: Path, tmp_path: Path) -> None:
    known_modules(root_tree, "ext4", "virtio_blk")
    toml = write(
        tmp_path / "b.toml", f'sysroot = "{root_tree}"\nmodules = ["ext4"]\ncompress = "xz"\n'
    )
    config = load_config(toml, {"modules": ["virtio_blk"], "compress": "gzip"})
    assert config.modules == ("ext4", "virtio_blk")
    assert config.compress is Compression.GZIP
    assert config.origins["compress"] == "command line"


def test_unknown_key_names_file_and_suggests(tmp_path: Path) -> None:
    toml = write(tmp_path / "b.toml", 'modulse = ["ext4"]\n')
    with pytest.raises(ConfigError) as error:
        load_config(toml, {})
    assert str(error.value) == f"{toml}: modulse: unknown key (did you mean 'modules'?)"


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "b.toml", 'modules = "ext4"\ncompress = "zstdd"\ncompress_level = "9"\n'
    )
    with pytest.raises(ConfigError) as error:
        load_config(toml, {})
    message = str(error.value)
    assert f"{toml}: modules: expected a list of strings" in message
    assert (
        f"{toml}: compress: 'zstdd' is not one of" in message and "did you mean 'zstd'" in message
    )
    assert f"{toml}: compress_level: expected an integer" in message
    assert "\n" not in message


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    toml = write(tmp_path / "b.toml", "modules = [\n")
    with pytest.raises(ConfigError, match=r"b\.toml: not valid TOML"):
        load_config(toml, {})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml", {})


def test_sysroot_that_is_not_a_root_tree(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"command line: sysroot: .* is not a root tree"):
        load_config(None, {"sysroot": str(tmp_path)})


def test_unknown_kernel_version_suggests_installed(root_tree: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"kver: no modules for kernel '6.1.0-tst'.*did you mean '6.1.0-test'"
    ):
        load_config(None, {"sysroot": str(root_tree), "kver": "6.1.0-tst"})


def test_output_directory_must_exist(root_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"output: directory .*/nowhere does not exist"):
        load_config(None, {"sysroot": str(root_tree), "output": str(tmp_path / "nowhere/x.img")})


def test_compress_level_checked_per_compressor(root_tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"compress_level: 15 is not a xz level \(0\.\.9\)"):
        load_config(None, {"sysroot": str(root_tree), "compress": "xz", "compress_level": 15})


def test_emergency_shell_password_must_be_a_hash(root_tree: Path) -> None:
    with pytest.raises(
        ConfigError, match="emergency_shell: expected 'locked', 'unlocked' or a crypt"
    ):
        load_config(None, {"sysroot": str(root_tree), "emergency_shell": "hunter2"})
    config = load_config(None, {"sysroot": str(root_tree), "emergency_shell": "$6$salt$hash"})
    assert config.emergency_access is EmergencyAccess.PASSWORD
    assert config.root_password_hash == "$6$salt$hash"


def test_relative_extra_file_rejected(root_tree: Path) -> None:
    with pytest.raises(ConfigError, match="files: 'etc/hosts' is not an absolute path"):
        load_config(None, {"sysroot": str(root_tree), "files": ["etc/hosts"]})


def test_module_keys_in_toml_and_flags(root_tree: Path, tmp_path: Path) -> None:
    toml = write(
        tmp_path / "b.toml",
        f'sysroot = "{root_tree}"\nmode = "generic"\nmicrocode = false\n'
        'omit_modules = ["nouveau*"]\ndriver_classes = ["nvme"]\n',
    )
    config = load_config(toml, {"driver_classes": ["usb-storage"], "omit_modules": ["radeon"]})
    assert config.mode is ModuleMode.GENERIC
    assert config.microcode is False
    assert config.driver_classes == ("nvme", "usb-storage")
    assert config.omit_modules == ("nouveau*", "radeon")
    assert load_config(None, {"sysroot": str(root_tree)}).mode is ModuleMode.HOSTONLY


def test_unknown_driver_class_suggests(root_tree: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, {"sysroot": str(root_tree), "driver_classes": ["nvm"]})
    assert str(error.value) == (
        "command line: driver_classes: unknown driver class 'nvm' (did you mean 'nvme'?)"
    )


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (["--generic", "--hostonly"], "argument --hostonly: not allowed with argument --generic"),
        (
            ["--no-microcode", "--microcode"],
            "argument --microcode: not allowed with argument --no-microcode",
        ),
    ],
)
def test_mode_and_microcode_flags_are_exclusive_pairs(
    flags: list[str], refusal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = make_parser()
    args = parser.parse_args(["build", "--generic", "--no-microcode"])
    assert (args.mode, args.microcode) == ("generic", False)
    assert parser.parse_args(["build"]).mode is None  # the config file or default decides
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["build", *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"bookend build: error: {refusal}"


# --- drop-in directories -----------------------------------------------------------

USR, ETC, RUN = "usr/lib/bookend/conf.d", "etc/bookend/conf.d", "run/bookend/conf.d"


def drop_in(config_root: Path, directory: str, name: str, text: str) -> Path:
    path = config_root / directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    root.mkdir()
    return root


def test_drop_ins_apply_in_name_order_across_directories(
    root_tree: Path, config_root: Path
) -> None:
    known_modules(root_tree, "a", "b", "c")
    # Lexical order of the file names decides, not the directory they are in.
    c = drop_in(config_root, USR, "30-c.toml", 'compress = "gzip"\nmodules = ["c"]\n')
    a = drop_in(config_root, RUN, "10-a.toml", 'compress = "xz"\nmodules = ["a"]\n')
    b = drop_in(config_root, ETC, "20-b.toml", 'modules = ["b", "a"]\n')
    config = load_config(None, {"sysroot": str(root_tree)}, config_root=config_root)
    assert config.compress is Compression.GZIP
    assert config.origins["compress"] == str(c)
    assert config.modules == ("a", "b", "c")
    # Each item once, with the file that first named it.
    assert config.item_origins["modules"] == (str(a), str(b), str(c))
    assert config.origins["modules"] == f"{a}, {b}, {c}"


def test_later_directory_masks_same_name(root_tree: Path, config_root: Path) -> None:
    known_modules(root_tree, "vendor", "admin")
    drop_in(config_root, USR, "50-vendor.toml", 'modules = ["vendor"]\ncompress = "xz"\n')
    admin = drop_in(config_root, ETC, "50-vendor.toml", 'modules = ["admin"]\n')
    config = load_config(None, {"sysroot": str(root_tree)}, config_root=config_root)
    assert config.modules == ("admin",)
    assert config.compress is Compression.ZSTD  # the masked file gives nothing at all
    assert config.item_origins["modules"] == (str(admin),)


def test_symlink_to_dev_null_masks_and_other_names_are_ignored(
    root_tree: Path, config_root: Path
) -> None:
    drop_in(config_root, USR, "50-vendor.toml", 'compress = "xz"\n')
    (config_root / ETC).mkdir(parents=True)
    (config_root / ETC / "50-vendor.toml").symlink_to("/dev/null")
    drop_in(config_root, ETC, "60-notes.conf", "this is not TOML at all [")
    drop_in(config_root, ETC, ".#70-lock.toml", "neither is this [")
    config = load_config(None, {"sysroot": str(root_tree)}, config_root=config_root)
    assert config.compress is Compression.ZSTD
    assert config.origins["compress"] == "default"


def test_empty_list_resets_what_came_before(root_tree: Path, config_root: Path) -> None:
    known_modules(root_tree, "a", "b", "c")
    drop_in(config_root, USR, "10-a.toml", 'modules = ["a", "b"]\n')
    reset = drop_in(config_root, ETC, "20-reset.toml", "modules = []\n")
    config = load_config(None, {"sysroot": str(root_tree)}, config_root=config_root)
    assert config.modules == ()
    assert config.origins["modules"] == str(reset)  # who emptied it
    # Items after the reset count again, and the --config file comes after every drop-in.
    later = drop_in(config_root, ETC, "30-c.toml", 'modules = ["c"]\n')
    extra = write(config_root / "extra.toml", 'modules = ["a"]\n')
    config = load_config(
        extra, {"sysroot": str(root_tree), "modules": ["b"]}, config_root=config_root
    )
    assert config.modules == ("c", "a", "b")
    assert config.item_origins["modules"] == (str(later), str(extra), "command line")


def test_config_file_and_flags_come_after_drop_ins(root_tree: Path, config_root: Path) -> None:
    drop_in(config_root, RUN, "99-last.toml", f'sysroot = "{root_tree}"\ncompress = "xz"\n')
    extra = write(config_root / "extra.toml", 'compress = "gzip"\ncompress_level = 3\n')
    config = load_config(extra, {"compress_level": 5}, config_root=config_root)
    assert (config.compress, config.origins["compress"]) == (Compression.GZIP, str(extra))
    assert (config.compress_level, config.origins["compress_level"]) == (5, "command line")
    assert config.origins["sysroot"].endswith("99-last.toml")


def test_problems_of_every_drop_in_at_once(root_tree: Path, config_root: Path) -> None:
    bad_syntax = drop_in(config_root, USR, "10-a.toml", 'compress = "xz"\nmodules = [\n"a"\n')
    typo = drop_in(config_root, ETC, "20-b.toml", 'compres = "xz"\n')
    wrong = drop_in(config_root, RUN, "30-c.toml", "microcode = 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(None, {"sysroot": str(root_tree)}, config_root=config_root)
    message = str(error.value)
    assert f"{bad_syntax}: not valid TOML: " in message and "line 3" in message
    assert f"{typo}: compres: unknown key (did you mean 'compress'?)" in message
    assert f"{wrong}: microcode: expected true or false, got the number 1" in message


def test_setting_below_a_table_header_is_pointed_out(tmp_path: Path) -> None:
    toml = write(tmp_path / "b.toml", '[modules_extra]\nnote = "x"\nmodules = ["ext4"]\n')
    with pytest.raises(ConfigError) as error:
        load_config(toml, {})
    assert str(error.value) == (
        f"{toml}: modules_extra.modules: unknown key: settings are top-level keys, not in a "
        "table [modules_extra] (move 'modules' above the first [table] line)"
    )


def test_missing_config_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"command line: config_root: .*/absent is not a dir"):
        load_config(None, {}, config_root=tmp_path / "absent")


# --- bookend config show -------------------------------------------------------------


def bookend(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bookend", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def test_config_show_origin_names_each_file(
    root_tree: Path, config_root: Path, tmp_path: Path
) -> None:
    known_modules(root_tree, "a", "b")
    a = drop_in(config_root, ETC, "10-a.toml", 'modules = ["a"]\ncompress = "xz"\n')
    result = bookend(
        "config", "show", "--origin", "--config-root", str(config_root),
        "--sysroot", str(root_tree), "--add-module", "b", "--generic", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f'sysroot = "{root_tree}"  # command line' in lines
    assert f'compress = "xz"  # {a}' in lines
    assert 'mode = "generic"  # command line' in lines
    assert "compress_level = 6  # default" in lines  # xz's own default level
    assert 'kver = "6.1.0-test"  # default' in lines
    assert f'output = "{tmp_path}/bookend-initrd-6.1.0-test.img"  # default' in lines
    start = lines.index("modules = [")
    assert lines[start + 1 : start + 4] == [f'    "a",  # {a}', '    "b",  # command line', "]"]
    # Every setting is shown, and the text is TOML that reads back to the same values.
    shown = tomllib.loads(result.stdout)
    unset = {s.key for s in SETTINGS if f"# {s.key} is not set" in lines}
    assert set(shown) | unset == {s.key for s in SETTINGS}
    assert shown["modules"] == ["a", "b"] and shown["microcode"] is True


def test_config_show_json(root_tree: Path, config_root: Path, tmp_path: Path) -> None:
    known_modules(root_tree, "a")
    a = drop_in(config_root, USR, "10-a.toml", 'modules = ["a"]\nhooks = ["mount=echo hi"]\n')
    common = ["--config-root", str(config_root), "--sysroot", str(root_tree), "--generic"]
    plain = bookend("config", "show", "--json", *common, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    values = json.loads(plain.stdout)
    assert values["modules"] == ["a"] and values["hooks"] == ["mount=echo hi"]
    assert values["activation"] is None and values["emergency_shell"] == "locked"
    origins = json.loads(bookend("config", "show", "--json", "--origin", *common).stdout)
    assert origins["modules"] == {"value": ["a"], "origin": str(a), "item_origins": [str(a)]}
    assert origins["mode"] == {"value": "generic", "origin": "command line"}
    assert set(origins) == {s.key for s in SETTINGS}


def test_config_show_reports_unknown_key_with_suggestion(
    root_tree: Path, config_root: Path
) -> None:
    typo = drop_in(config_root, ETC, "10-typo.toml", 'modules = ["a"]\nomit_module = ["x"]\n')
    result = bookend("config", "show", "--config-root", str(config_root))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert f"{typo}: omit_module: unknown key (did you mean 'omit_modules'?)" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# --- the table: one declaration per setting -------------------------------------------


def test_every_on_off_setting_has_both_flags_and_they_override_a_file(
    root_tree: Path, tmp_path: Path
) -> None:
    parser = make_parser()
    for setting in SETTINGS:
        if setting.kind is bool:
            name = setting.cli_flag.removeprefix("--")
            assert parser.parse_args(["build", f"--{name}"]).__dict__[setting.key] is True
            assert parser.parse_args(["build", f"--no-{name}"]).__dict__[setting.key] is False
            assert parser.parse_args(["build"]).__dict__[setting.key] is None
    toml = write(tmp_path / "b.toml", f'sysroot = "{root_tree}"\nforce = true\nexitrd = false\n')
    args = parser.parse_args(["build", "--config", str(toml), "--no-force", "--exitrd"])
    config = load_config(args.config, {"force": args.force, "exitrd": args.exitrd})
    assert (config.force, config.exitrd) == (False, True)
    assert config.origins["force"] == "command line"


def test_each_field_of_config_is_a_setting_with_its_type(root_tree: Path) -> None:
    """The Config the build reads holds every setting under its own key, of its type."""
    config = load_config(None, {"sysroot": str(root_tree), "hooks": ["mount=echo hi"]})
    assert [s.key for s in SETTINGS] == [
        name for name in config.__dataclass_fields__ if name not in ("origins", "item_origins")
    ]
    assert isinstance(config.sysroot, Path) and isinstance(config.exitrd_output, Path)
    assert config.compress is Compression.ZSTD and config.mode is ModuleMode.HOSTONLY
    assert config.hooks == (("mount", "echo hi"),)
    assert config.features == () and config.emergency_shell == "locked"


def test_the_module_database_is_parsed_once_for_resolve_plan_and_closure(
    root_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bookend import kmodules
    from bookend.scancache import ScanCache
    from bookend.sysroot import Sysroot

    known_modules(root_tree, "virtio_blk")
    parsed: list[str] = []
    real = kmodules.load_database

    def counting(sysroot: Sysroot, kver: str) -> kmodules.ModuleDatabase:
        parsed.append(kver)
        return real(sysroot, kver)

    monkeypatch.setattr(kmodules, "load_database", counting)
    cache = ScanCache(None)  # the build's: `bookend build` gives resolve the same one
    values = {"sysroot": str(root_tree), "modules": ["virtio_blk"]}
    config = load_config(None, values, cache=cache)
    assert parsed == ["6.1.0-test"]  # resolve checked the module names in it
    # What the plan (hostonly detection) and the closure call for it, with that cache:
    db = kmodules.shared_database(Sysroot(config.sysroot), config.kver, cache)
    assert parsed == ["6.1.0-test"] and "virtio_blk" in db.paths


def test_compress_threads_from_flag_and_file_within_range(root_tree: Path, tmp_path: Path) -> None:
    args = make_parser().parse_args(["build", "--compress-threads", "4"])
    assert (
        load_config(
            None, {"sysroot": str(root_tree), "compress_threads": args.compress_threads}
        ).compress_threads
        == 4
    )
    assert load_config(None, {"sysroot": str(root_tree)}).compress_threads == 0  # per core
    toml = write(tmp_path / "b.toml", f'sysroot = "{root_tree}"\ncompress_threads = -1\n')
    with pytest.raises(ConfigError) as error:
        load_config(toml, {})
    assert str(error.value) == f"{toml}: compress_threads: -1 is not a number of threads (0..256)"
