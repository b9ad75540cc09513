"""Boot splash: plymouth with the sysroot's theme, its DRM drivers and password agent.

Everything is found the way the sysroot's plymouth finds it: plymouthd and the client
where plymouth-start.service runs them, and the plugin, theme and configuration paths
compiled into plymouthd and its libply libraries (what `plymouth
--get-splash-plugin-path` prints), never a distribution's directory written here. The
theme is the sysroot's (Theme= of plymouthd.conf, else plymouthd.defaults) or the one
configured; a theme whose file or plugin is missing falls back to "text", as plymouthd
itself falls back when it cannot load a theme.

Whether it shows is decided at boot: the image's plymouth-start.service runs only when
the kernel command line says `splash` (or Fedora's `rhgb`), besides the sysroot's own
conditions (`plymouth.enable=0`, `nosplash`). Without it no plymouthd runs and the
console password agent asks, as in an image without plymouth. With it, plymouthd asks
through systemd-ask-password-plymouth and the console agent stands aside (its
ConditionPathExists=!/run/plymouth/pid).

At switch-root plymouthd survives (it marks itself "@" for systemd) and the sysroot's
plymouth-switch-root.service hands it the new root; the real root's plymouth-quit.service
ends it. A real root without plymouth has no such unit, so bookend's own unit asks it to
quit before the switch when /sysroot has no plymouth client. (Without that, a systemd 252
root still ends it later, when its first isolate stops the carried-over
plymouth-start.service it has no file for; another init would leave it running.)
"""

from __future__ import annotations

import configparser
import dataclasses
import logging
import posixpath
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config.table import ModuleMode
from bookend.errors import SysrootError
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.libsearch import LibrarySearch
from bookend.sysroot import Sysroot
from bookend.units import EXEC_SEARCH_PATH, exec_lines, find_unit

log = logging.getLogger(__name__)

START_UNIT = "plymouth-start.service"
# The units the sysroot's plymouth has for an initrd: the daemon, the hand-over to the
# new root, and systemd's agent that forwards password questions to plymouthd.
UNITS = (
    START_UNIT,
    "?plymouth-switch-root.service",
    "systemd-ask-password-plymouth.path",
    "systemd-ask-password-plymouth.service",
)
FALLBACK_THEME = "text"
# Plugins plymouthd falls back on without a theme (details: no splash), and renderers
# for a DRM device or a plain framebuffer; a label plugin draws a graphical theme's
# text (the text themes write to the terminal and need none).
BASE_PLUGINS = ("text.so", "details.so")
TEXT_THEMES = ("text", "details", "tribar")
LABEL_PLUGINS = ("label.so", "label-pango.so", "label-freetype.so")
RENDERERS = ("renderers/drm.so", "renderers/frame-buffer.so")

# fontconfig's own configuration (its upstream default, which pango's label plugin
# reads); the fonts come from the directories it names.
FONTS_CONF = "/etc/fonts/fonts.conf"
FONTS_CONF_DIR = "/etc/fonts/conf.d"
FONT_KEYS = ("Font", "TitleFont", "MonospaceFont")

START_DROPIN = f"/etc/systemd/system/{START_UNIT}.d/bookend-splash.conf"
START_CONDITIONS = """\
# Written by bookend: the splash shows only when the kernel command line asks for it.
[Unit]
ConditionKernelCommandLine=|splash
ConditionKernelCommandLine=|rhgb
"""
QUIT_UNIT = "bookend-plymouth-quit.service"
QUIT_UNIT_TEMPLATE = """\
# Written by bookend: a real root without plymouth has no plymouth-quit.service to end
# the initrd's plymouthd, which outlives switch-root; end it before.
[Unit]
Description=Stop the boot splash for a root without plymouth
DefaultDependencies=no
ConditionPathExists=/run/plymouth/pid
ConditionPathExists=!/sysroot{client}
After=initrd.target initrd-cleanup.service
Before=initrd-switch-root.service plymouth-switch-root.service

[Service]
Type=oneshot
ExecStart=-{client} quit
"""


@dataclass(frozen=True)
class PlymouthPaths:
    """Where the sysroot's plymouth looks for things, as its binaries say."""

    daemon: str
    client: str
    plugin_dir: str  # ends in "/"
    themes_dir: str  # ends in "/"
    config_files: tuple[str, ...]  # plymouthd.conf, then plymouthd.defaults
    helpers: tuple[str, ...]  # programs plymouthd runs (the DRM fd escrow)


@dataclass(frozen=True)
class Theme:
    name: str
    file: str  # the .plymouth file
    plugin: str  # the ModuleName's plugin
    image_dir: str | None  # ImageDir=, when the theme's images are elsewhere
    fonts: tuple[str, ...] = ()  # font families its text is drawn in (Font=, TitleFont=)
    fell_back_from: str | None = None  # the theme asked for, when it could not be used


def plymouth_paths(sysroot: Sysroot) -> PlymouthPaths:
    """The sysroot's plymouth: its programs from plymouth-start.service, its directories
    from the strings compiled into plymouthd and the libply libraries it loads."""
    daemon, client = _programs(sysroot)
    strings = _compiled_strings(sysroot, daemon)

    def one(pattern: str, what: str) -> str:
        found = [s for s in strings if re.fullmatch(pattern, s)]
        if not found:
            raise SysrootError(f"{sysroot.host_path(daemon)}: no {what} compiled in")
        return found[0]

    config_files = [s for s in strings if re.fullmatch(r"/etc/\S*/plymouthd\.conf", s)]
    config_files += [s for s in strings if re.fullmatch(r"/(?!run/)\S*/plymouthd\.defaults", s)]
    return PlymouthPaths(
        daemon=daemon,
        client=client,
        plugin_dir=one(r"/(?!var/|run/|usr/share/)\S*lib\S*/plymouth/", "plugin directory"),
        themes_dir=one(r"/(?!run/)\S*/plymouth/themes/", "themes directory"),
        config_files=tuple(_normalized(f) for f in dict.fromkeys(config_files)),
        helpers=tuple(s for s in strings if s.endswith("/plymouthd-fd-escrow")),
    )


def _programs(sysroot: Sysroot) -> tuple[str, str]:
    """plymouthd and plymouth, where the sysroot's plymouth-start.service runs them."""
    unit = find_unit(sysroot, START_UNIT)
    if unit is None:
        raise SysrootError(f"{sysroot.host_path('/')}: no {START_UNIT}; is plymouth installed?")
    programs = [line.program for line in exec_lines(sysroot.read_text(unit) or "")]
    daemon = next((p for p in programs if p.endswith("/plymouthd")), None)
    client = next((p for p in programs if p.endswith("/plymouth")), None)
    daemon = daemon or _on_path(sysroot, "plymouthd")
    client = client or _on_path(sysroot, "plymouth")
    if daemon is None or client is None:
        raise SysrootError(f"{sysroot.host_path(unit)}: cannot tell where plymouthd is")
    return daemon, client


def _on_path(sysroot: Sysroot, name: str) -> str | None:
    return next((f"{d}/{name}" for d in EXEC_SEARCH_PATH if sysroot.exists(f"{d}/{name}")), None)


def _compiled_strings(sysroot: Sysroot, daemon: str) -> list[str]:
    """Absolute paths in plymouthd and the libply libraries it needs, in that order."""
    libraries = LibrarySearch(sysroot)
    files = [daemon]
    info = libraries.info_if_elf(daemon)
    if info is not None:
        for soname in info.needed:
            found = libraries.find(soname, daemon, info) if soname.startswith("libply") else None
            files += [found] if found else []
    strings: list[str] = []
    for path in files:
        data = sysroot.read_bytes(path) or b""
        strings += [m.decode() for m in re.findall(rb"(?<=\0)/[\x21-\x7e]+(?=\0)", data)]
    return list(dict.fromkeys(strings))


def _normalized(path: str) -> str:
    # plymouth joins its directory and the file name with a slash of its own.
    return re.sub("/+", "/", path)


def configured_theme(sysroot: Sysroot, paths: PlymouthPaths) -> str | None:
    """Theme= from the first of plymouth's configuration files that names one."""
    for path in paths.config_files:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(sysroot.read_text(path) or "")
        except configparser.Error as error:
            raise SysrootError(f"{sysroot.host_path(path)}: {error}".splitlines()[0]) from None
        theme = parser.get("Daemon", "Theme", fallback="").strip()
        if theme:
            return theme
    return None


def resolve_theme(sysroot: Sysroot, paths: PlymouthPaths, wanted: str | None) -> Theme:
    """The theme the image shows: wanted (or the sysroot's), else the text theme."""
    wanted = wanted or configured_theme(sysroot, paths) or FALLBACK_THEME
    theme = _usable_theme(sysroot, paths, wanted)
    if theme is not None:
        return theme
    log.warning("plymouth theme %s: its files or plugin are missing; using %s", wanted,
                FALLBACK_THEME)  # fmt: skip
    fallback = _usable_theme(sysroot, paths, FALLBACK_THEME)
    if fallback is None:
        raise SysrootError(
            f"{sysroot.host_path(paths.themes_dir)}: neither theme {wanted} nor "
            f"{FALLBACK_THEME} is usable"
        )
    return dataclasses.replace(fallback, fell_back_from=wanted)


def _usable_theme(sysroot: Sysroot, paths: PlymouthPaths, name: str) -> Theme | None:
    """The theme named name, when its .plymouth file and plugin are there."""
    file = f"{paths.themes_dir}{name}/{name}.plymouth"
    text = sysroot.read_text(file)
    if text is None:
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    module = parser.get("Plymouth Theme", "ModuleName", fallback="").strip()
    plugin = f"{paths.plugin_dir}{module}.so"
    if not module or not sysroot.exists(plugin):
        return None
    image_dir = parser.get(module, "ImageDir", fallback="").strip() or None
    fonts = [parser.get(module, key, fallback="") for key in FONT_KEYS]
    # "Cantarell Light 30": the family, then the size pango takes.
    families = [re.sub(r"\s+\d+(\.\d+)?$", "", font.strip()) for font in fonts if font.strip()]
    return Theme(name, file, plugin, image_dir, tuple(dict.fromkeys(families)))


def image_config(sysroot: Sysroot, paths: PlymouthPaths, theme: Theme) -> str:
    """The image's plymouthd.conf: the sysroot's [Daemon] settings, with the theme the
    image carries (which may be a fallback or the configured one)."""
    lines = ["# Written by bookend: the sysroot's plymouth settings, with the image's theme.",
             "[Daemon]", f"Theme={theme.name}"]  # fmt: skip
    own = sysroot.read_text(paths.config_files[0]) if paths.config_files else None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(own or "")
    if parser.has_section("Daemon"):
        lines += [f"{k}={v}" for k, v in parser.items("Daemon") if k.lower() != "theme"]
    return "\n".join(lines) + "\n"


def font_files(sysroot: Sysroot, families: tuple[str, ...]) -> list[str]:
    """The font files of the families a theme names, found in fontconfig's font
    directories; when none is there, those of fontconfig's preferred sans-serif family
    (what pango falls back to)."""
    files = _font_index(sysroot)
    found = [path for family in families for path in files.get(_compact(family), [])]
    if found:
        return list(dict.fromkeys(found))
    for family in _preferred_sans(sysroot):
        if files.get(_compact(family)):
            return files[_compact(family)]
    return []


def _compact(family: str) -> str:
    return re.sub(r"[\s_-]", "", family).lower()


def _font_index(sysroot: Sysroot) -> dict[str, list[str]]:
    """Font files by the family their name spells ("Cantarell-Light.otf": cantarelllight;
    a regular face also under its bare family)."""
    index: dict[str, list[str]] = {}
    for directory in _font_dirs(sysroot):
        for path in _files_under(sysroot, directory):
            stem, ext = posixpath.splitext(posixpath.basename(path))
            if ext.lower() not in (".ttf", ".otf", ".ttc", ".pfb", ".pcf"):
                continue
            key = _compact(stem)
            index.setdefault(key, []).append(path)
            for regular in ("regular", "book"):
                if key.endswith(regular):
                    index.setdefault(key.removesuffix(regular), []).append(path)
    return index


def _files_under(sysroot: Sysroot, directory: str) -> list[str]:
    found = []
    for name in sorted(sysroot.listdir(directory)):
        path = f"{directory}/{name}"
        found += _files_under(sysroot, path) if sysroot.is_dir(path) else [path]
    return found


def _fontconfig(sysroot: Sysroot, path: str) -> ElementTree.Element | None:
    text = sysroot.read_text(path)
    if text is None:
        return None
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None


def _font_dirs(sysroot: Sysroot) -> list[str]:
    """The absolute <dir>s of the sysroot's fonts.conf."""
    root = _fontconfig(sysroot, FONTS_CONF)
    dirs = [] if root is None else [d.text or "" for d in root.iter("dir") if not d.get("prefix")]
    return [d.strip() for d in dirs if d.strip().startswith("/")]


def _preferred_sans(sysroot: Sysroot) -> list[str]:
    """The families fontconfig's configuration prefers for sans-serif, in its order."""
    preferred: list[str] = []
    for path in sorted(sysroot.glob(f"{FONTS_CONF_DIR}/*.conf")):
        root = _fontconfig(sysroot, path)
        for alias in [] if root is None else root.iter("alias"):
            if (alias.findtext("family") or "").strip() != "sans-serif":
                continue
            prefer = alias.find("prefer")
            if prefer is not None:
                preferred += [(f.text or "").strip() for f in prefer.iter("family")]
    return list(dict.fromkeys(preferred))


def gpu_drivers(sysfs: Path) -> list[str]:
    """The modules driving this machine's graphics cards (their DRM devices' drivers)."""
    drivers: list[str] = []
    for card in sorted((sysfs / "class/drm").glob("card*")):
        module = card / "device/driver/module"
        if module.is_symlink():
            drivers.append(module.readlink().name)
    return list(dict.fromkeys(drivers))


def _splash(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    paths = plymouth_paths(sysroot)
    theme = resolve_theme(sysroot, paths, config.splash_theme)
    reason = "feature plymouth"
    items: list[Request | Generated] = [
        Request(RequestKind.EXECUTABLE, path, reason)
        for path in (paths.daemon, paths.client, *paths.helpers)
    ]
    items += _theme_requests(paths, theme, f"{reason}: theme {theme.name}")
    items += [
        Request(RequestKind.PATH, f"{paths.plugin_dir}{name}", f"{reason}: renderer", optional=True)
        for name in RENDERERS
    ]
    items += [Request(RequestKind.PATH, f, f"{reason}: settings") for f in paths.config_files[1:]]
    items += _font_requests(sysroot, paths, theme, reason)
    items += _generated(sysroot, paths, theme)
    items += _drivers(context, reason)
    return items


def _font_requests(
    sysroot: Sysroot, paths: PlymouthPaths, theme: Theme, reason: str
) -> list[Request]:
    """fontconfig's configuration and the theme's fonts, when a label plugin draws text."""
    labels = [f"{paths.plugin_dir}{name}" for name in LABEL_PLUGINS]
    labels = [path for path in labels if sysroot.exists(path)]
    if not labels or theme.name in TEXT_THEMES:
        return []
    why = f"{reason}: text of theme {theme.name}"
    items = [Request(RequestKind.PATH, path, why) for path in labels]
    items += [Request(RequestKind.PATH, path, why, optional=True)
              for path in (FONTS_CONF, FONTS_CONF_DIR)]  # fmt: skip
    items += [Request(RequestKind.PATH, path, why) for path in font_files(sysroot, theme.fonts)]
    return items


def _theme_requests(paths: PlymouthPaths, theme: Theme, reason: str) -> list[Request]:
    themes = [theme.name] if theme.name == FALLBACK_THEME else [theme.name, FALLBACK_THEME]
    items = [Request(RequestKind.PATH, f"{paths.themes_dir}{name}", reason) for name in themes]
    items += [Request(RequestKind.PATH, theme.plugin, reason)]
    if theme.image_dir:
        items.append(Request(RequestKind.PATH, theme.image_dir, reason, optional=True))
    items += [
        Request(RequestKind.PATH, f"{paths.plugin_dir}{name}", reason, optional=True)
        for name in BASE_PLUGINS
    ]
    items.append(Request(RequestKind.PATH, f"{paths.themes_dir}details", reason, optional=True))
    return items


def _generated(sysroot: Sysroot, paths: PlymouthPaths, theme: Theme) -> list[Generated]:
    conf = paths.config_files[0] if paths.config_files else "/etc/plymouth/plymouthd.conf"
    quit_path = f"/etc/systemd/system/{QUIT_UNIT}"
    entries = [
        (conf, image_config(sysroot, paths, theme), "the theme the image carries"),
        (START_DROPIN, START_CONDITIONS, "shown only with `splash` on the command line"),
        (quit_path, QUIT_UNIT_TEMPLATE.format(client=paths.client), "no splash left running"),
    ]
    generated = [
        Generated(
            ArchiveEntry(path, EntryKind.FILE, 0o644, data=text.encode()),
            f"feature plymouth: {why}",
        )
        for path, text, why in entries
    ]
    link = f"/etc/systemd/system/initrd-switch-root.target.wants/{QUIT_UNIT}"
    generated.append(
        Generated(
            ArchiveEntry(link, EntryKind.SYMLINK, 0o777, target=f"../{QUIT_UNIT}"),
            "feature plymouth: no splash left running",
        )
    )
    return generated


def _drivers(context: FeatureContext, reason: str) -> list[Request]:
    """Generic: the DRM drivers of virtual and firmware displays. Hostonly: this
    machine's graphics drivers."""
    config = context.config
    if config.mode is ModuleMode.GENERIC:
        return [Request(RequestKind.DRIVER_CLASS, "drm", f"{reason}: displays", optional=True)]
    drivers = gpu_drivers(config.sysfs)
    if not drivers:
        log.warning("plymouth: no graphics card under %s/class/drm; the splash will be text",
                    config.sysfs)  # fmt: skip
    return [
        Request(RequestKind.MODULE, name, f"hostonly: {reason}: graphics card", optional=True)
        for name in drivers
    ]


FEATURE = Feature(
    name="plymouth",
    help="boot splash: plymouth, its theme and DRM drivers; shown with `splash` on the "
    "kernel command line, which then asks for passphrases",
    units=UNITS,
    # plymouthd uses only the DRM and framebuffer devices udev tagged "seat"; systemd's
    # seat rules do that.
    udev_rules=("71-seat.rules",),
    compute=_splash,
    switch_on=SwitchOn(settings=("splash",)),
)
