"""The token features (tpm2, fido2, pkcs11) on fixture sysroots of real ELF files: the
plugin found where libcryptsetup was built to look, the libraries systemd dlopens, the
p11-kit configuration, and what switches each feature on (crypttab options and LUKS2
headers in hostonly mode, the sysroot's plugin in generic mode)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bookend import luks2
from bookend.closure import build_closure
from bookend.config import Config
from bookend.drivers import DRIVER_CLASSES, GENERIC_CLASSES
from bookend.errors import SysrootError
from bookend.features import ALL, fido2, luks, pkcs11, tpm2
from bookend.features.base import FeatureContext, Request, RequestKind, split_contribution
from bookend.features.tokens import compiled_paths
from bookend.plan import Plan, switched_on
from bookend.storage import HostDetection, StorageKind
from tests.unit.conftest import load_config

from .elftree import compile_c, install_libc, shared_library

MULTIARCH = "/usr/lib/x86_64-linux-gnu"
# Not Debian's directory: the plugin must be found where libcryptsetup says.
PLUGIN_DIR = "/usr/lib/fixture-tokens/cryptsetup"
LIBRARIES = (
    "libtss2-esys.so.0",
    "libtss2-rc.so.0",
    "libtss2-mu.so.0",
    "libtss2-tcti-device.so.0",
    "libfido2.so.1",
)
P11_KIT_DIRS = ("/etc/pkcs11/modules", "/usr/share/p11-kit/modules", f"{MULTIARCH}/pkcs11")


def strings_c(*strings: str) -> str:
    """A library body holding strings, as paths compiled into a library are."""
    names = ", ".join(f'"{text}"' for text in strings)
    return f"const char *const fixture_paths[] = {{{names}}};\nint fixture(void) {{ return 0; }}\n"


def token_root(root: Path, *, compiled_dir: str | None = PLUGIN_DIR) -> Path:
    """A sysroot with systemd-cryptsetup, libcryptsetup (built to look in compiled_dir),
    the three plugins there and every library the tokens need."""
    install_libc(root)
    compile_c("int main(void) { return 0; }\n", root / "usr/lib/systemd/systemd-cryptsetup")
    # "/run/cryptsetup" ends the same way: a directory without plugins is not the one.
    paths = ("/run/cryptsetup", compiled_dir) if compiled_dir else ("/run/cryptsetup",)
    shared_library(root, MULTIARCH, "libcryptsetup.so.12", strings_c(*paths))
    plugin_dir = compiled_dir or f"{MULTIARCH}/cryptsetup"
    for token in ("tpm2", "fido2", "pkcs11"):
        plugin = root / plugin_dir.lstrip("/") / f"libcryptsetup-token-systemd-{token}.so"
        compile_c("int plugin(void) { return 0; }\n", plugin, "-shared", "-fPIC")
    for soname in LIBRARIES:
        shared_library(root, MULTIARCH, soname, "int f(void) { return 0; }\n")
    p11_kit = (*P11_KIT_DIRS, "/etc/pkcs11/pkcs11.conf")
    shared_library(root, MULTIARCH, "libp11-kit.so.0", strings_c(*p11_kit))
    modules = root / "usr/share/p11-kit/modules"
    modules.mkdir(parents=True)
    (modules / "opensc.module").write_text("# a card's module\nmodule: opensc-pkcs11.so\n")
    module = root / MULTIARCH.lstrip("/") / "pkcs11/opensc-pkcs11.so"
    compile_c("int C_GetFunctionList(void) { return 0; }\n", module, "-shared", "-fPIC")
    return root


def config_of(root: Path, **values: str) -> Config:
    return load_config(None, {"sysroot": str(root), **values})


def image_paths(config: Config, *items: Request) -> set[str]:
    closure = build_closure(config, Plan(features=(), requests=items, generated=()))
    return set(closure.entries)


def feature_requests(feature_compute: object, context: FeatureContext) -> list[Request]:
    assert callable(feature_compute)
    return split_contribution(feature_compute(context))[0]


def test_compiled_paths_are_whole_absolute_strings() -> None:
    binary = b"\0/run/cryptsetup\0x/not/absolute/cryptsetup\0/lib/x/cryptsetup\0%s/lib\0"
    assert compiled_paths(binary, "/cryptsetup") == ["/run/cryptsetup", "/lib/x/cryptsetup"]


def test_tpm2_brings_its_plugin_from_libcryptsetups_own_directory(root_tree: Path) -> None:
    config = config_of(token_root(root_tree))
    requests = feature_requests(tpm2.FEATURE.compute, FeatureContext(config))
    paths = image_paths(config, *requests)
    assert f"{PLUGIN_DIR}/libcryptsetup-token-systemd-tpm2.so" in paths
    assert f"{PLUGIN_DIR}/libcryptsetup-token-systemd-fido2.so" not in paths
    for soname in LIBRARIES[:4]:
        assert f"{MULTIARCH}/{soname}.0" in paths  # the real file, and its soname link
        assert f"{MULTIARCH}/{soname}" in paths
    assert not any(path.startswith(f"{MULTIARCH}/cryptsetup") for path in paths)


def test_without_a_compiled_path_the_plugin_is_beside_libcryptsetup(root_tree: Path) -> None:
    config = config_of(token_root(root_tree, compiled_dir=None))
    requests = feature_requests(fido2.FEATURE.compute, FeatureContext(config))
    paths = image_paths(config, *requests)
    assert f"{MULTIARCH}/cryptsetup/libcryptsetup-token-systemd-fido2.so" in paths
    assert f"{MULTIARCH}/libfido2.so.1.0" in paths


def test_pkcs11_brings_p11_kit_its_configuration_and_the_modules_named(root_tree: Path) -> None:
    config = config_of(token_root(root_tree))
    requests = feature_requests(pkcs11.FEATURE.compute, FeatureContext(config))
    paths = image_paths(config, *requests)
    assert f"{PLUGIN_DIR}/libcryptsetup-token-systemd-pkcs11.so" in paths
    assert f"{MULTIARCH}/libp11-kit.so.0.0" in paths
    assert "/usr/share/p11-kit/modules/opensc.module" in paths
    assert f"{MULTIARCH}/pkcs11/opensc-pkcs11.so" in paths


def test_a_missing_library_is_an_error_naming_it(root_tree: Path) -> None:
    root = token_root(root_tree)
    (root / MULTIARCH.lstrip("/") / "libtss2-rc.so.0").unlink()
    with pytest.raises(SysrootError, match=r"feature tpm2: the sysroot has no libtss2-rc\.so\.0"):
        feature_requests(tpm2.FEATURE.compute, FeatureContext(config_of(root)))


def test_fido2_and_tpm2_name_their_drivers() -> None:
    fido = {(r.kind, r.name) for r in fido2.FEATURE.requests()}
    assert {(RequestKind.MODULE, "usbhid"), (RequestKind.MODULE, "hid_generic")} <= fido
    assert (RequestKind.DRIVER_CLASS, "keyboard") in fido  # HID and the USB host controllers
    assert (RequestKind.UDEV_RULES, "60-fido-id.rules") in fido
    assert (RequestKind.DRIVER_CLASS, "tpm") in {(r.kind, r.name) for r in tpm2.FEATURE.requests()}
    tpm = DRIVER_CLASSES["tpm"]
    assert tpm.directories == ("kernel/drivers/char/tpm/",)
    assert {"tpm_crb", "tpm_tis"} <= set(tpm.modules)
    assert "tpm" not in GENERIC_CLASSES  # the tpm2 feature asks for it


# --- what switches them on --------------------------------------------------------

TOKEN_FEATURES = ("tpm2", "fido2", "pkcs11")


def token_features(config: Config, detection: HostDetection | None) -> list[str]:
    return [name for name in switched_on(config, detection, ALL) if name in TOKEN_FEATURES]


def luks_detection(crypt_devices: tuple[tuple[str, str], ...] = ()) -> HostDetection:
    return HostDetection(
        modules=(),
        filesystems=("ext4",),
        block_devices=("dm-0", "vda2", "vda"),
        storage=((StorageKind.LUKS, "LUKS volume dm-0 under / (ext4 on /dev/dm-0)"),),
        crypt_volumes=("root",),
        crypt_devices=crypt_devices,
    )


def test_generic_switches_on_the_tokens_the_sysroot_has(root_tree: Path) -> None:
    root = token_root(root_tree)
    config = config_of(root, mode="generic")
    assert token_features(config, None) == ["tpm2", "fido2", "pkcs11"]
    (root / MULTIARCH.lstrip("/") / "libfido2.so.1").unlink()  # plugin without library
    (root / PLUGIN_DIR.lstrip("/") / "libcryptsetup-token-systemd-pkcs11.so").unlink()
    assert token_features(config_of(root, mode="generic"), None) == ["tpm2"]


@pytest.mark.parametrize(
    ("options", "wanted"),
    [
        ("luks,tpm2-device=auto", ["tpm2"]),
        ("luks,fido2-device=auto,discard", ["fido2"]),
        ("pkcs11-uri=auto", ["pkcs11"]),
        ("luks,discard", []),
    ],
)
def test_hostonly_switches_on_what_the_roots_crypttab_line_asks_for(
    root_tree: Path, options: str, wanted: list[str]
) -> None:
    root = token_root(root_tree)
    # Another volume's options are not the root's business.
    (root / "etc/crypttab").write_text(
        f"root UUID=1 none {options}\nhome UUID=2 none tpm2-device=auto,fido2-device=auto\n"
    )
    assert token_features(config_of(root), luks_detection()) == wanted


def luks2_image(path: Path, token_type: str | None) -> Path:
    """A LUKS2 header made by cryptsetup, with a token of token_type imported."""
    with path.open("wb") as image:
        image.truncate(32 * 2**20)
    fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    subprocess.run(
        ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *fast,
         "--key-file=-", str(path)],
        input=b"passphrase", check=True,
    )  # fmt: skip
    if token_type:
        token = path.with_suffix(".json")
        token.write_text(json.dumps({"type": token_type, "keyslots": ["0"]}))
        # Without the plugins, which would check a systemd token's fields.
        subprocess.run(
            ["cryptsetup", "--disable-external-tokens", "token", "import",
             "--json-file", str(token), str(path)],
            check=True,
        )  # fmt: skip
    return path


def test_luks2_token_types_read_from_a_header_cryptsetup_made(tmp_path: Path) -> None:
    image = luks2_image(tmp_path / "luks.img", "systemd-fido2")
    assert luks2.token_types(image) == ("systemd-fido2",)
    assert luks2.token_types(luks2_image(tmp_path / "plain.img", None)) == ()
    (tmp_path / "zeros").write_bytes(bytes(8192))
    assert luks2.token_types(tmp_path / "zeros") == ()
    assert luks2.token_types(tmp_path / "absent") == ()


def test_hostonly_switches_on_the_token_in_the_roots_luks2_header(
    root_tree: Path, tmp_path: Path
) -> None:
    root = token_root(root_tree)
    (root / "etc/crypttab").write_text("root UUID=1 none luks\n")
    devfs = tmp_path / "dev"
    (devfs / "block").mkdir(parents=True)
    luks2_image(devfs / "block/252:2", "systemd-tpm2")
    config = config_of(root, devfs=str(devfs))
    assert token_features(config, luks_detection((("root", "252:2"),))) == ["tpm2"]
    assert token_features(config, luks_detection((("root", "252:9"),))) == []


def test_luks_brings_libcryptsetup_where_systemd_cryptsetup_dlopens_it(root_tree: Path) -> None:
    # systemd >= 254 loads libcryptsetup with dlopen() and calls it "suggested" in its
    # .note.dlopen; the fixture's systemd-cryptsetup does not link it either.
    config = config_of(token_root(root_tree))
    context = FeatureContext(config)
    initrd = feature_requests(luks.FEATURE.compute, context)
    assert f"{MULTIARCH}/libcryptsetup.so.12" in image_paths(config, *initrd)


def test_luks_asks_nothing_more_where_libcryptsetup_is_linked(root_tree: Path) -> None:
    install_libc(root_tree)
    shared_library(root_tree, MULTIARCH, "libcryptsetup.so.12", "int f(void) { return 0; }\n")
    compile_c("int f(void); int main(void) { return f(); }\n",
              root_tree / "usr/lib/systemd/systemd-cryptsetup",
              f"-L{root_tree}{MULTIARCH}", "-l:libcryptsetup.so.12")  # fmt: skip
    context = FeatureContext(config_of(root_tree))
    assert luks.dlopened_libcryptsetup(context) == []
