"""The plymouth feature on fixture trees: where it finds plymouth's files (from the
binaries, not from a distribution's layout), which theme it takes and when it falls
back to text, and what it puts into the image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bookend.archive import EntryKind
from bookend.config import Config
from bookend.config.table import ModuleMode
from bookend.errors import SysrootError
from bookend.features import plymouth
from bookend.features.base import FeatureContext, Generated, Request, RequestKind
from bookend.plan import switched_on
from bookend.sysroot import Sysroot
from tests.unit.conftest import load_config
from tests.unit.elftree import c_string, compile_c

# A layout no distribution uses, so nothing can be found by a guessed path.
PLUGINS = "/opt/ply/lib64/plymouth/"
THEMES = "/opt/ply/share/plymouth/themes/"
CONF = "/etc/ply/plymouthd.conf"
DEFAULTS = "/opt/ply/share/plymouth/plymouthd.defaults"
DAEMON = "/opt/ply/sbin/plymouthd"
CLIENT = "/opt/ply/bin/plymouth"
COMPILED_IN = (
    PLUGINS, THEMES, "/run/plymouth/themes/", "/var/lib/plymouth/", "/etc/ply//plymouthd.conf",
    "/opt/ply/share/plymouth//plymouthd.defaults", "/run/plymouth/plymouthd.defaults",
    "/opt/ply/libexec/plymouthd-fd-escrow",
)  # fmt: skip
START_UNIT = f"""\
[Unit]
Description=Show Plymouth Boot Screen
ConditionKernelCommandLine=!plymouth.enable=0
[Service]
ExecStart={DAEMON} --mode=boot --pid-file=/run/plymouth/pid --attach-to-session
ExecStartPost=-{CLIENT} show-splash
"""


def put(root: Path, path: str, text: str = "") -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def theme_file(module: str, extra: str = "") -> str:
    return f"[Plymouth Theme]\nName=x\nModuleName={module}\n\n[{module}]\n{extra}"


@pytest.fixture
def sysroot(root_tree: Path) -> Path:
    """plymouth at /opt/ply: its daemon knows its directories, its unit runs it."""
    strings = ", ".join(c_string(s) for s in COMPILED_IN)
    source = f"const char *paths[] = {{{strings}}};\nint main(void) {{ return paths[0][0]; }}\n"
    compile_c(source, root_tree / DAEMON.lstrip("/"))
    put(root_tree, CLIENT)
    put(root_tree, "/opt/ply/libexec/plymouthd-fd-escrow")
    put(root_tree, "/usr/lib/systemd/system/plymouth-start.service", START_UNIT)
    for unit in plymouth.UNITS[1:]:
        put(root_tree, f"/usr/lib/systemd/system/{unit.lstrip('?')}", "[Unit]\n")
    put(root_tree, CONF, "[Daemon]\nTheme=spinner\nShowDelay=0\n")
    put(root_tree, DEFAULTS, "[Daemon]\nTheme=glow\nDeviceTimeout=8\n")
    for name in ("text.so", "details.so", "two-step.so", "renderers/drm.so", "label.so"):
        put(root_tree, PLUGINS + name)
    put(root_tree, f"{THEMES}text/text.plymouth", theme_file("text"))
    put(root_tree, f"{THEMES}details/details.plymouth", theme_file("details"))
    spinner = f"ImageDir={THEMES}spinner\nFont=Cantarell 12\nTitleFont=Cantarell Light 30\n"
    put(root_tree, f"{THEMES}spinner/spinner.plymouth", theme_file("two-step", spinner))
    put(root_tree, f"{THEMES}spinner/entry.png")
    put(root_tree, "/etc/fonts/fonts.conf", "<fontconfig><dir>/opt/fonts</dir></fontconfig>")
    put(root_tree, "/opt/fonts/cantarell/Cantarell-Regular.otf")
    put(root_tree, "/opt/fonts/cantarell/Cantarell-Light.otf")
    put(root_tree, "/opt/fonts/dejavu/DejaVuSans.ttf")
    return root_tree


def paths_of(root: Path) -> plymouth.PlymouthPaths:
    return plymouth.plymouth_paths(Sysroot(root))


def test_paths_come_from_the_unit_and_the_binary(sysroot: Path) -> None:
    paths = paths_of(sysroot)
    assert (paths.daemon, paths.client) == (DAEMON, CLIENT)
    assert (paths.plugin_dir, paths.themes_dir) == (PLUGINS, THEMES)
    assert paths.config_files == (CONF, DEFAULTS)
    assert paths.helpers == ("/opt/ply/libexec/plymouthd-fd-escrow",)


def test_without_plymouth_start_the_error_says_so(root_tree: Path) -> None:
    with pytest.raises(SysrootError, match=r"no plymouth-start\.service"):
        paths_of(root_tree)


def test_theme_of_plymouthd_conf_then_defaults(sysroot: Path) -> None:
    theme = plymouth.resolve_theme(Sysroot(sysroot), paths_of(sysroot), None)
    assert (theme.name, theme.plugin, theme.fell_back_from) == (
        "spinner",
        f"{PLUGINS}two-step.so",
        None,
    )
    assert theme.image_dir == f"{THEMES}spinner"
    assert theme.fonts == ("Cantarell", "Cantarell Light")
    put(sysroot, CONF, "# nothing chosen\n[Daemon]\n")
    put(sysroot, DEFAULTS, "[Daemon]\nTheme=details\n")
    assert plymouth.resolve_theme(Sysroot(sysroot), paths_of(sysroot), None).name == "details"


def test_a_missing_theme_falls_back_to_text(
    sysroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put(sysroot, CONF, "[Daemon]\nTheme=emerald\n")
    theme = plymouth.resolve_theme(Sysroot(sysroot), paths_of(sysroot), None)
    assert (theme.name, theme.fell_back_from) == ("text", "emerald")
    assert "plymouth theme emerald" in caplog.text


def test_a_theme_without_its_plugin_falls_back_to_text(sysroot: Path) -> None:
    (sysroot / PLUGINS.lstrip("/") / "two-step.so").unlink()
    theme = plymouth.resolve_theme(Sysroot(sysroot), paths_of(sysroot), "spinner")
    assert (theme.name, theme.plugin) == ("text", f"{PLUGINS}text.so")


def test_without_even_the_text_theme_the_build_fails(sysroot: Path) -> None:
    (sysroot / THEMES.lstrip("/") / "text/text.plymouth").unlink()
    with pytest.raises(SysrootError, match="neither theme emerald nor text"):
        plymouth.resolve_theme(Sysroot(sysroot), paths_of(sysroot), "emerald")


def config_for(root: Path, **values: object) -> Config:
    return load_config(None, {"sysroot": str(root), "splash": True, **values})


def contribution(config: Config) -> tuple[dict[str, Request], dict[str, Generated]]:
    items = plymouth._splash(FeatureContext(config))
    requests = {i.name: i for i in items if isinstance(i, Request)}
    generated = {i.entry.path: i for i in items if isinstance(i, Generated)}
    return requests, generated


def test_what_goes_into_a_generic_image(sysroot: Path) -> None:
    config = config_for(sysroot, mode="generic", splash_theme="spinner")
    requests, generated = contribution(config)
    for path in (DAEMON, CLIENT, f"{THEMES}spinner", f"{THEMES}text", f"{PLUGINS}two-step.so",
                 f"{PLUGINS}text.so", f"{PLUGINS}label.so", DEFAULTS, "/etc/fonts/fonts.conf",
                 "/opt/fonts/cantarell/Cantarell-Regular.otf",
                 "/opt/fonts/cantarell/Cantarell-Light.otf"):  # fmt: skip
        assert path in requests, path
    assert "/opt/fonts/dejavu/DejaVuSans.ttf" not in requests
    assert requests["drm"].kind is RequestKind.DRIVER_CLASS
    # The image's plymouthd.conf names the theme it carries, keeping the rest.
    conf = generated[CONF].entry.data or b""
    assert b"Theme=spinner\n" in conf and b"ShowDelay=0\n" in conf
    dropin = generated[plymouth.START_DROPIN].entry.data or b""
    assert b"ConditionKernelCommandLine=|splash\n" in dropin
    quit_unit = generated[f"/etc/systemd/system/{plymouth.QUIT_UNIT}"].entry.data or b""
    assert f"ConditionPathExists=!/sysroot{CLIENT}\n".encode() in quit_unit
    assert f"ExecStart=-{CLIENT} quit\n".encode() in quit_unit
    link = generated[f"/etc/systemd/system/initrd-switch-root.target.wants/{plymouth.QUIT_UNIT}"]
    assert link.entry.kind is EntryKind.SYMLINK


def test_the_text_fallback_brings_no_fonts(sysroot: Path) -> None:
    put(sysroot, CONF, "[Daemon]\nTheme=emerald\n")
    requests, generated = contribution(config_for(sysroot, mode="generic"))
    assert f"{THEMES}spinner" not in requests and f"{PLUGINS}label.so" not in requests
    assert not any("/fonts" in name for name in requests)
    assert b"Theme=text\n" in (generated[CONF].entry.data or b"")


def test_hostonly_takes_the_running_graphics_driver(sysroot: Path, tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    module = sysfs / "module/bochs"
    module.mkdir(parents=True)
    device = sysfs / "devices/pci0000:00/0000:00:02.0"
    (device / "driver").mkdir(parents=True)
    (device / "driver/module").symlink_to(module)
    (sysfs / "class/drm").mkdir(parents=True)
    (sysfs / "class/drm/card0").mkdir()
    (sysfs / "class/drm/card0/device").symlink_to(device)
    config = dataclasses.replace(config_for(sysroot), mode=ModuleMode.HOSTONLY, sysfs=sysfs)
    requests, _ = contribution(config)
    assert requests["bochs"].kind is RequestKind.MODULE
    assert "drm" not in requests


def test_the_splash_setting_switches_the_feature_on(sysroot: Path) -> None:
    config = config_for(sysroot, mode="generic")
    assert "plymouth" in switched_on(config, None)
    assert "plymouth" not in switched_on(dataclasses.replace(config, splash=False), None)
