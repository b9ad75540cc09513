"""What the token features (tpm2, fido2, pkcs11) share: how systemd-cryptsetup unlocks a
LUKS2 volume with a token systemd-cryptenroll wrote, and what switches them on.

systemd-cryptsetup unlocks a LUKS2 volume's token through libcryptsetup, which dlopens
its token plugin (libcryptsetup-token-systemd-tpm2.so and the like) from the directory
it was built with; the plugin, or systemd-cryptsetup itself, then dlopens the token's
own libraries (systemd 252 dlopens libtss2-esys, -rc, -mu and libtss2-tcti-device; 257
the same, naming the first three in a .note.dlopen as only "suggested"). Nothing links
them, so each feature names them, and finds them where the loader would at boot:
libcryptsetup on the sysroot's library path, its plugin directory from the path
compiled into it (another distribution's may differ), else its own directory's
`cryptsetup/`.

What switches a token feature on:
- hostonly: a volume / or /usr stands on whose crypttab line asks for the token
  (tpm2-device=, fido2-device=, pkcs11-uri=) or whose LUKS2 header has such a token;
- generic: the sysroot has the token's plugin and libraries (rd.luks.options= on the
  command line is then the user's business).
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from bookend import luks2
from bookend.errors import SysrootError
from bookend.features.base import Contribution, FeatureContext, Request, RequestKind
from bookend.features.luks import LIBCRYPTSETUP, crypttab_for, loaded_by_cryptsetup
from bookend.sysroot import Sysroot

log = logging.getLogger(__name__)

# Absolute paths among the NUL-terminated strings of a binary.
COMPILED_PATH = re.compile(rb"(?<=\0)/[A-Za-z0-9_.+/-]+(?=\0)")


@dataclass(frozen=True)
class TokenKind:
    feature: str  # the feature's name, e.g. "tpm2"
    token_type: str  # as the LUKS2 header names it, e.g. "systemd-tpm2"
    crypttab_option: str  # the crypttab option that asks for it, e.g. "tpm2-device"
    libraries: tuple[str, ...]  # sonames systemd dlopens for it

    @property
    def plugin_file(self) -> str:
        """libcryptsetup's name for the token's plugin (its "%s/libcryptsetup-token-%s.so")."""
        return f"libcryptsetup-token-{self.token_type}.so"


def compiled_paths(binary: bytes, suffix: str) -> list[str]:
    """The absolute paths ending in suffix among a binary's strings, each once, in order."""
    found = (match.decode() for match in COMPILED_PATH.findall(binary))
    return list(dict.fromkeys(path for path in found if path.endswith(suffix)))


class TokenSearch:
    """Lookups in one sysroot as systemd-cryptsetup's loader makes them at boot."""

    def __init__(self, sysroot: Sysroot) -> None:
        self.sysroot = sysroot

    def library(self, soname: str) -> str | None:
        """The path the loader opens for soname, dlopened by systemd-cryptsetup."""
        return loaded_by_cryptsetup(self.sysroot, soname)

    def plugin_dirs(self) -> list[str]:
        """Where libcryptsetup looks for token plugins: the directory compiled into it,
        then its own directory's cryptsetup/."""
        library = self.library(LIBCRYPTSETUP)
        if library is None:
            return []
        compiled = compiled_paths(self.sysroot.read_bytes(library) or b"", "/cryptsetup")
        beside = posixpath.join(posixpath.dirname(library), "cryptsetup")
        return list(dict.fromkeys([*compiled, beside]))

    def plugin(self, kind: TokenKind) -> str | None:
        """The token's plugin in the first plugin directory that has it."""
        for directory in self.plugin_dirs():
            path = posixpath.join(directory, kind.plugin_file)
            if self.sysroot.exists(path):
                return path
        return None


def hostonly_wants(kind: TokenKind, context: FeatureContext) -> list[str]:
    """Why this machine's / or /usr needs the token: each volume whose crypttab line asks
    for it, or whose LUKS2 header holds one."""
    detection = context.detection
    if detection is None or not detection.crypt_volumes:
        return []
    sysroot = Sysroot(context.config.sysroot)
    crypttab = crypttab_for(sysroot.read_text("/etc/crypttab") or "", detection.crypt_volumes)
    reasons = []
    for line in crypttab.text.splitlines()[1:]:
        fields = line.split()
        options = fields[3].split(",") if len(fields) > 3 else []
        if any(option.split("=", 1)[0] == kind.crypttab_option for option in options):
            reasons.append(f"crypttab: {fields[0]} has {kind.crypttab_option}=")
    for volume, majmin in detection.crypt_devices:
        if kind.token_type in luks2.token_types(context.config.devfs / "block" / majmin):
            reasons.append(f"LUKS2 header of {volume} ({majmin}) has a {kind.token_type} token")
    return reasons


def switch(kind: TokenKind) -> Callable[[FeatureContext], bool]:
    """What switches the token's feature on (besides naming it): see the module's text."""

    def detected(context: FeatureContext) -> bool:
        if context.detection is not None:
            return bool(hostonly_wants(kind, context))
        search = TokenSearch(Sysroot(context.config.sysroot))
        has_libraries = all(search.library(soname) for soname in kind.libraries)
        return has_libraries and search.plugin(kind) is not None

    return detected


def contribution(kind: TokenKind, context: FeatureContext) -> Contribution:
    """The token's plugin (if the sysroot has one) and the libraries systemd dlopens."""
    search = TokenSearch(Sysroot(context.config.sysroot))
    items: list[Request] = []
    plugin = search.plugin(kind)
    if plugin is None:
        # systemd-cryptsetup unlocks tokens itself too; only libcryptsetup's own
        # tools (cryptsetup open --token-only) need the plugin.
        log.warning(
            "feature %s: no %s in the sysroot's libcryptsetup plugin directories (%s)",
            kind.feature,
            kind.plugin_file,
            ", ".join(search.plugin_dirs()) or "no libcryptsetup found",
        )
    else:
        reason = f"feature {kind.feature}: libcryptsetup's {kind.token_type} token plugin"
        items.append(Request(RequestKind.PATH, plugin, reason))
    for soname in kind.libraries:
        found = search.library(soname)
        if found is None:
            raise SysrootError(
                f"feature {kind.feature}: the sysroot has no {soname}, which systemd loads "
                f"to unlock {kind.token_type} tokens"
            )
        reason = f"feature {kind.feature}: dlopened by systemd for {kind.token_type} tokens"
        items.append(Request(RequestKind.PATH, found, reason))
    if context.detection is not None:
        for why in hostonly_wants(kind, context):
            log.info("feature %s: hostonly: %s", kind.feature, why)
    return items
