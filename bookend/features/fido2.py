"""FIDO2: LUKS2 volumes enrolled with `systemd-cryptenroll --fido2-device=...` unlock in
the initrd with a security key (see tokens.py for what switches it on and how its files
are found). The key is a USB HID device: the HID and USB host controller drivers come
with it, and systemd's udev rule that marks it a security token (fido_id)."""

from __future__ import annotations

from bookend.features.base import Contribution, Feature, FeatureContext, SwitchOn
from bookend.features.tokens import TokenKind, contribution, switch

KIND = TokenKind(
    feature="fido2",
    token_type="systemd-fido2",
    crypttab_option="fido2-device",
    libraries=("libfido2.so.1",),
)


def _contribution(context: FeatureContext) -> Contribution:
    return contribution(KIND, context)


FEATURE = Feature(
    name="fido2",
    help="unlock LUKS2 volumes with systemd-cryptenroll's FIDO2 token (fido2-device=)",
    requires=("luks",),
    udev_rules=("?60-fido-id.rules",),
    # libfido2 talks to the key through /dev/hidraw*; the keyboard class brings the
    # HID drivers and the USB host controllers.
    modules=("?hidraw", "?usbhid", "?hid_generic"),
    driver_classes=("keyboard",),
    compute=_contribution,
    switch_on=SwitchOn(detected=switch(KIND)),
)
