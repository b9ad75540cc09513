"""The console's keyboard layout and font, as the sysroot configures them.

systemd reads /etc/vconsole.conf (KEYMAP, KEYMAP_TOGGLE, FONT, FONT_MAP, FONT_UNIMAP, and
XKB_* from systemd-localed). Debian configures the keyboard in /etc/default/keyboard
(XKBLAYOUT and friends) instead, and console-setup compiles that into a console keymap it
caches as /etc/console-setup/cached_*.kmap.gz, the keymap the running system loads and
the one Debian's initramfs-tools puts into its image. With no cached keymap, an XKB
layout is turned into a console keymap as systemd-localed does: a keymap converted from
XKB (keymaps/xkb/LAYOUT[-VARIANT].map, as Fedora ships), else the best line of
systemd's kbd-model-map table.

The keymap and font are then found the way kbd's loadkeys and setfont find them, with
every file a keymap includes, so the image holds exactly what loading them reads.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import zstandard

from bookend.errors import BookendError, ConfigError, SysrootError
from bookend.sysroot import Sysroot

VCONSOLE_CONF = "/etc/vconsole.conf"
DEBIAN_KEYBOARD = "/etc/default/keyboard"
CONSOLE_SETUP_DIR = "/etc/console-setup"
KBD_MODEL_MAP = "/usr/share/systemd/kbd-model-map"
# The layout the kernel starts with: a console with it and no font needs nothing.
DEFAULT_KEYMAP = "us"

# Where kbd keeps its data: Debian's console-data and console-setup under /usr/share,
# kbd's own install under /usr/share/kbd, Fedora's under /usr/lib/kbd.
KBD_ROOTS = ("/usr/share", "/usr/share/kbd", "/usr/lib/kbd")
COMPRESSIONS = ("", ".gz", ".bz2", ".xz", ".zst")
# What loadkeys and setfont append to a bare name, in their order.
KEYMAP_SUFFIXES = ("", ".kmap", ".map")
INCLUDE_SUFFIXES = ("", ".inc")
FONT_SUFFIXES = ("", ".psfu", ".psf", ".cp", ".fnt")
FONT_MAP_SUFFIXES = ("", ".trans", "_to_uni.trans", ".acm")
FONT_UNIMAP_SUFFIXES = ("", ".uni", ".sfm")

VCONSOLE_KEYS = ("KEYMAP", "KEYMAP_TOGGLE", "FONT", "FONT_MAP", "FONT_UNIMAP")
XKB_KEYS = ("XKB_LAYOUT", "XKB_MODEL", "XKB_VARIANT", "XKB_OPTIONS")
# /etc/default/keyboard's names for what vconsole.conf calls XKB_*.
DEBIAN_XKB = {"XKBLAYOUT": "XKB_LAYOUT", "XKBMODEL": "XKB_MODEL",
              "XKBVARIANT": "XKB_VARIANT", "XKBOPTIONS": "XKB_OPTIONS"}  # fmt: skip

INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"', re.MULTILINE)


@dataclass(frozen=True)
class ConsoleSettings:
    """The image's /etc/vconsole.conf: its assignments, and where each came from."""

    values: Mapping[str, str] = field(default_factory=dict)  # vconsole.conf key -> value
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> file or setting

    @property
    def needs_setup(self) -> bool:
        """Something to load: a keymap other than the kernel's own, or a font."""
        keymap = self.values.get("KEYMAP", "")
        return bool(keymap and keymap != DEFAULT_KEYMAP) or bool(self.values.get("FONT"))

    def vconsole_conf(self) -> str:
        lines = ["# Written by bookend: the console's keymap and font (vconsole.conf(5))."]
        for key, value in self.values.items():
            lines.append(f"# {key} from {self.sources[key]}")
            lines.append(f"{key}={shlex.quote(value)}")
        return "\n".join(lines) + "\n"


def parse_assignments(text: str) -> dict[str, str]:
    """KEY=value lines as an environment file or a shell script holds them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            words = [value.strip()]
        values[key.strip()] = " ".join(words)
    return values


def console_settings(sysroot: Sysroot, configured: Mapping[str, str | None]) -> ConsoleSettings:
    """What the console loads: the configured keymap and font (setting name -> value, by
    vconsole.conf key), else the sysroot's vconsole.conf, else its XKB layout converted."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    own = parse_assignments(sysroot.read_text(VCONSOLE_CONF) or "")
    for key in (*VCONSOLE_KEYS, *XKB_KEYS):
        if own.get(key):
            values[key], sources[key] = own[key], VCONSOLE_CONF
    if not any(own.get(key) for key in XKB_KEYS):
        debian = parse_assignments(sysroot.read_text(DEBIAN_KEYBOARD) or "")
        for debian_key, key in DEBIAN_XKB.items():
            if debian.get(debian_key):
                values[key], sources[key] = debian[debian_key], DEBIAN_KEYBOARD
    if "KEYMAP" not in values and values.get("XKB_LAYOUT"):
        keymap = keymap_for_xkb(sysroot, values)
        if keymap is not None:
            values["KEYMAP"], sources["KEYMAP"] = keymap, f"{sources['XKB_LAYOUT']} (converted)"
    for key, value in configured.items():
        if value is not None:
            setting = {"KEYMAP": "keymap", "FONT": "console_font"}.get(key, key)
            values[key], sources[key] = value, f"setting {setting}"
    ordered = {key: values[key] for key in (*VCONSOLE_KEYS, *XKB_KEYS) if key in values}
    return ConsoleSettings(ordered, sources)


def keymap_for_xkb(sysroot: Sysroot, xkb: Mapping[str, str]) -> str | None:
    """The console keymap for an XKB layout: console-setup's cached one, where it was
    made from the current /etc/default/keyboard, else systemd-localed's conversion."""
    layout, variant = xkb.get("XKB_LAYOUT", ""), xkb.get("XKB_VARIANT", "")
    if layout == DEFAULT_KEYMAP and not variant.strip(","):
        # The kernel's own layout: console-setup caches a keymap for it too, but an image
        # needs nothing loaded for it (XKB options such as ctrl:nocaps are not kept).
        return DEFAULT_KEYMAP
    cached = cached_keymap(sysroot)
    if cached is not None:
        return cached
    return converted_keymap(sysroot, layout, variant) or legacy_keymap(
        sysroot.read_text(KBD_MODEL_MAP) or "", xkb
    )


def cached_keymap(sysroot: Sysroot) -> str | None:
    """console-setup's compiled keymap (cached_CHARMAP_BACKSPACE.kmap.gz), the UTF-8 one
    first, if setupcon wrote it after the last change to /etc/default/keyboard."""
    names = sysroot.glob(f"{CONSOLE_SETUP_DIR}/cached_*.kmap.gz")
    if not names:
        return None
    path = sorted(names, key=lambda name: "UTF-8" not in name)[0]
    keyboard, cached = sysroot.resolve(DEBIAN_KEYBOARD).st, sysroot.resolve(path).st
    if keyboard is not None and cached is not None and cached.st_mtime < keyboard.st_mtime:
        return None  # stale: the layout changed and setupcon has not run since
    return path


def converted_keymap(sysroot: Sysroot, layout: str, variant: str) -> str | None:
    """keymaps/xkb/LAYOUT[-VARIANT].map, for the first layout and variant (localed)."""
    first_layout = layout.split(",")[0]
    first_variant = variant.split(",")[0]
    name = f"{first_layout}-{first_variant}" if first_variant else first_layout
    for root in keymap_roots(sysroot):
        for compression in COMPRESSIONS:
            if sysroot.exists(f"{root}/xkb/{name}.map{compression}"):
                return name
    return None


def legacy_keymap(table: str, xkb: Mapping[str, str]) -> str | None:
    """The keymap of kbd-model-map's best line for an XKB layout, scored as
    systemd-localed scores them: the layout (10 exact, 9 reversed, 5 or 1 for the first
    of several), then model, variant and options in turn, the first best line winning."""
    layout, model = xkb.get("XKB_LAYOUT", ""), xkb.get("XKB_MODEL", "")
    variant, options = xkb.get("XKB_VARIANT", ""), xkb.get("XKB_OPTIONS", "")
    best, best_score = None, 0
    for line in table.splitlines():
        fields = line.split()
        if len(fields) != 5 or fields[0].startswith("#"):
            continue
        keymap, map_layout, map_model, map_variant, map_options = fields
        score = _layout_score(layout, map_layout)
        if score and (not model or model == map_model):
            score += 1
            no_variant = not variant.strip(",") and map_variant == "-"
            if variant == map_variant or no_variant:
                score += 1
                if options == map_options:
                    score += 1
        if score > best_score:
            best, best_score = keymap, score
    return best


def _layout_score(layout: str, map_layout: str) -> int:
    if layout == map_layout:
        return 10
    if layout == ",".join(reversed(map_layout.split(","))):
        return 9
    if _first_of(layout, map_layout):
        return 5
    return 1 if _first_of(layout, map_layout.split(",")[0]) else 0


def _first_of(layout: str, prefix: str) -> bool:
    """layout is prefix, or prefix followed by more layouts."""
    return layout == prefix or layout.startswith(prefix + ",")


# Finding the files loading needs


def keymap_roots(sysroot: Sysroot) -> list[str]:
    return [f"{root}/keymaps" for root in KBD_ROOTS if sysroot.is_dir(f"{root}/keymaps")]


def _candidates(base: str, suffixes: tuple[str, ...]) -> Iterator[str]:
    for suffix in suffixes:
        for compression in COMPRESSIONS:
            yield f"{base}{suffix}{compression}"


def _first_file(sysroot: Sysroot, bases: list[str], suffixes: tuple[str, ...]) -> str | None:
    for base in bases:
        for path in _candidates(base, suffixes):
            resolved = sysroot.resolve(path)
            if resolved.st is not None and not sysroot.is_dir(path):
                return path
    return None


def _walk_dirs(sysroot: Sysroot, top: str) -> Iterator[str]:
    """top and every directory under it, in name order (loadkeys searches keymaps/**)."""
    yield top
    for name in sysroot.listdir(top):
        if sysroot.is_dir(f"{top}/{name}"):
            yield from _walk_dirs(sysroot, f"{top}/{name}")


def find_keymap(sysroot: Sysroot, name: str) -> str | None:
    """The file loadkeys loads for a KEYMAP= value: a path, or a name under keymaps/."""
    if name.startswith("/"):
        return _first_file(sysroot, [name], KEYMAP_SUFFIXES)
    for root in keymap_roots(sysroot):
        bases = [f"{directory}/{name}" for directory in _walk_dirs(sysroot, root)]
        found = _first_file(sysroot, bases, KEYMAP_SUFFIXES)
        if found is not None:
            return found
    return None


def read_keymap(sysroot: Sysroot, path: str) -> str:
    """A keymap's text, decompressed by its name."""
    data = sysroot.read_bytes(path) or b""
    openers: dict[str, Callable[[bytes], bytes]] = {
        ".gz": gzip.decompress,
        ".bz2": bz2.decompress,
        ".xz": lzma.decompress,
        ".zst": lambda raw: zstandard.ZstdDecompressor().decompressobj().decompress(raw),
    }
    opener = next((f for suffix, f in openers.items() if path.endswith(suffix)), None)
    try:
        return (opener(data) if opener else data).decode("utf-8", errors="replace")
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise SysrootError(f"{sysroot.host_path(path)}: cannot decompress: {exc}") from None


def find_include(sysroot: Sysroot, name: str, including: str) -> str | None:
    """The file `include "name"` in the keymap at including loads: beside it, in
    ../include or ../../include, then in the keymap trees' include directories."""
    if name.startswith("/"):
        return _first_file(sysroot, [name], INCLUDE_SUFFIXES)
    here = including.rpartition("/")[0]
    bases = [f"{here}/{name}", f"{here}/../include/{name}", f"{here}/../../include/{name}"]
    for root in keymap_roots(sysroot):
        bases += [f"{root}/include/{name}", f"{root}/i386/include/{name}"]
        bases += [f"{root}/mac/include/{name}"]
    found = _first_file(sysroot, bases, INCLUDE_SUFFIXES)
    return sysroot.resolve(found).path if found else None


def missing(source: str, what: str) -> BookendError:
    """A keymap or font that is not there: bad input when a setting named it, a sysroot
    that lacks it when the sysroot's own configuration did."""
    error = ConfigError if source.startswith("setting ") else SysrootError
    return error(f"{source}: {what}")


def keymap_files(sysroot: Sysroot, keymap: str, source: str) -> list[str]:
    """The keymap's file and every file it includes, directly or not."""
    top = find_keymap(sysroot, keymap)
    if top is None:
        roots = ", ".join(keymap_roots(sysroot)) or "no keymap directory on the sysroot"
        raise missing(source, f"keymap {keymap!r} not found ({roots})")
    files, pending = [top], [top]
    while pending:
        current = pending.pop(0)
        for name in INCLUDE.findall(read_keymap(sysroot, current)):
            found = find_include(sysroot, name, current)
            if found is None:
                raise SysrootError(
                    f"{sysroot.host_path(current)}: included keymap file {name!r} not found"
                )
            if found not in files:
                files.append(found)
                pending.append(found)
    return files


def font_file(sysroot: Sysroot, kind: str, name: str, source: str) -> str:
    """The file setfont reads for FONT, FONT_MAP or FONT_UNIMAP."""
    directory, suffixes = {
        "FONT": ("consolefonts", FONT_SUFFIXES),
        "FONT_MAP": ("consoletrans", FONT_MAP_SUFFIXES),
        "FONT_UNIMAP": ("unimaps", FONT_UNIMAP_SUFFIXES),
    }[kind]
    bases = [name] if name.startswith("/") else [f"{root}/{directory}/{name}" for root in KBD_ROOTS]
    found = _first_file(sysroot, bases, suffixes)
    if found is None:
        raise missing(source, f"{kind} {name!r} not found on the sysroot")
    return found


# kbd reads a compressed file through a pipe from the compressor's command (popen, so by
# /bin/sh): without it in the image, loadkeys loads an empty keymap and says nothing.
DECOMPRESSORS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


def decompressors(files: list[str]) -> list[str]:
    """The programs kbd runs to read files, each once."""
    found = (DECOMPRESSORS.get("." + path.rpartition(".")[2]) for path in files)
    return list(dict.fromkeys(name for name in found if name))


def console_files(sysroot: Sysroot, settings: ConsoleSettings) -> list[str]:
    """Every file loading the settings' keymap and font reads."""
    files: list[str] = []
    values, sources = settings.values, settings.sources
    for key in ("KEYMAP", "KEYMAP_TOGGLE"):
        if values.get(key):
            files += keymap_files(sysroot, values[key], sources[key])
    for key in ("FONT", "FONT_MAP", "FONT_UNIMAP"):
        if values.get(key):
            files.append(font_file(sysroot, key, values[key], sources[key]))
    return list(dict.fromkeys(files))
