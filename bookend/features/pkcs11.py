"""PKCS#11: LUKS2 volumes enrolled with `systemd-cryptenroll --pkcs11-token-uri=...`
unlock in the initrd with a smart card or token (see tokens.py for what switches it on
and how its files are found).

systemd finds the token through p11-kit, which loads the PKCS#11 modules its module
configuration names. Where p11-kit reads that configuration and looks for relative
module names is compiled into libp11-kit (Debian: /etc/pkcs11/modules,
/usr/share/p11-kit/modules, /etc/pkcs11/pkcs11.conf, /usr/lib/<triplet>/pkcs11): read
from it here, so the image holds the configuration at the paths p11-kit will read and
every module it names.
"""

from __future__ import annotations

import posixpath

from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.tokens import TokenKind, TokenSearch, compiled_paths, contribution, switch
from bookend.sysroot import Sysroot

KIND = TokenKind(
    feature="pkcs11",
    token_type="systemd-pkcs11",
    crypttab_option="pkcs11-uri",
    libraries=("libp11-kit.so.0",),
)


def module_names(text: str) -> list[str]:
    """The `module:` values of a p11-kit module configuration file (pkcs11.conf(5))."""
    names = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "module" and value.strip():
            names.append(value.strip())
    return names


def p11_kit_configuration(search: TokenSearch) -> Contribution:
    """p11-kit's configuration files and the modules they name, at p11-kit's own paths."""
    library = search.library(KIND.libraries[0])
    if library is None:
        return []
    sysroot = search.sysroot
    binary = sysroot.read_bytes(library) or b""
    config_dirs = compiled_paths(binary, "/modules")
    module_dirs = compiled_paths(binary, "/pkcs11") or [posixpath.dirname(library)]
    reason = "feature pkcs11: p11-kit's module configuration"
    items: list[Request] = [
        Request(RequestKind.PATH, path, reason, optional=True)
        for path in (*config_dirs, *compiled_paths(binary, "/pkcs11.conf"))
    ]
    for directory in config_dirs:
        for name in sysroot.listdir(directory):
            for module in module_names(sysroot.read_text(f"{directory}/{name}") or ""):
                path = posixpath.join(module_dirs[0], module)  # an absolute one stays
                reason = f"feature pkcs11: module named by {directory}/{name}"
                items.append(Request(RequestKind.PATH, path, reason, optional=True))
    return items


def _contribution(context: FeatureContext) -> Contribution:
    search = TokenSearch(Sysroot(context.config.sysroot))
    return [*contribution(KIND, context), *p11_kit_configuration(search)]


FEATURE = Feature(
    name="pkcs11",
    help="unlock LUKS2 volumes with systemd-cryptenroll's PKCS#11 token (pkcs11-uri=)",
    requires=("luks",),
    # Smart card readers and tokens are USB devices.
    driver_classes=("keyboard",),
    compute=_contribution,
    switch_on=SwitchOn(detected=switch(KIND)),
)
