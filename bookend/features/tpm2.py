"""TPM2: LUKS2 volumes enrolled with `systemd-cryptenroll --tpm2-device=...` (with a PCR
policy, with or without a PIN) unlock in the initrd (see tokens.py for what switches it
on and how its files are found). The TPM drivers come as the "tpm" driver class; with
systemd 256 and later, tpm2.target and its generator order unlocking after the TPM."""

from __future__ import annotations

from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.tokens import TokenKind, contribution, switch
from bookend.sysroot import Sysroot
from bookend.units import find_unit

KIND = TokenKind(
    feature="tpm2",
    token_type="systemd-tpm2",
    crypttab_option="tpm2-device",
    # libtss2-tcti-device: systemd builds the TCTI's name from the driver ("device").
    libraries=(
        "libtss2-esys.so.0",
        "libtss2-rc.so.0",
        "libtss2-mu.so.0",
        "libtss2-tcti-device.so.0",
    ),
)


# systemd 252 and later measure the boot's phases into PCR 11 (after a UKI's
# systemd-stub measured the kernel): the initrd's phase is "enter-initrd". The unit
# comes with the initrd.target.wants link systemd ships for it; it runs only under a
# UKI and with a TPM (its conditions).
PCRPHASE_UNIT = "systemd-pcrphase-initrd.service"


def _contribution(context: FeatureContext) -> Contribution:
    items = list(contribution(KIND, context))
    if find_unit(Sysroot(context.config.sysroot), PCRPHASE_UNIT) is not None:
        reason = "feature tpm2: measure the initrd phase into PCR 11"
        items.append(Request(RequestKind.UNIT, PCRPHASE_UNIT, reason))
    return items


FEATURE = Feature(
    name="tpm2",
    help="unlock LUKS2 volumes with systemd-cryptenroll's TPM2 token (tpm2-device=)",
    requires=("luks",),
    units=("?tpm2.target",),
    generators=("?systemd-tpm2-generator",),
    driver_classes=("tpm",),
    compute=_contribution,
    switch_on=SwitchOn(detected=switch(KIND)),
)
