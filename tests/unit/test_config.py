from __future__ import annotations

from pathlib import Path

import pytest

from bookend.cli import make_parser
from bookend.config import Compression, EmergencyAccess, ModuleMode, load_config
from bookend.errors import ConfigError


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


def test_mode_and_microcode_flags_are_exclusive_pairs() -> None:
    parser = make_parser()
    args = parser.parse_args(["build", "--generic", "--no-microcode"])
    assert (args.mode, args.microcode) == ("generic", False)
    assert parser.parse_args(["build"]).mode is None  # the config file or default decides
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "--generic", "--hostonly"])
