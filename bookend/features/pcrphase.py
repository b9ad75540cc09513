"""systemd-pcrphase in a UKI's initrd: PCR 11 extended as the initrd starts and ends.

A UKI's stub measures its sections into PCR 11; systemd-pcrphase-initrd.service adds
"enter-initrd" and, as it stops, "leave-initrd", the phases `--pcr-private-key` signs
(bookend.signing). The unit has ConditionSecurity=measured-uki (systemd 255 and later),
so it does nothing unless a measuring stub started the kernel with a TPM; it is enabled
by the link systemd ships in initrd.target.wants, and systemd-pcrextend comes with its
ExecStart=. systemd marks the TPM libraries it dlopens "suggested", which the closure
leaves out, so they are added here where the sysroot has them (the tpm2 feature's list).
"""

from __future__ import annotations

from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.tokens import TokenSearch
from bookend.features.tpm2 import KIND as TPM2
from bookend.sysroot import Sysroot


def _libraries(context: FeatureContext) -> Contribution:
    search = TokenSearch(Sysroot(context.config.sysroot))
    reason = "feature pcrphase: dlopened by systemd-pcrextend for the TPM"
    found = (search.library(soname) for soname in TPM2.libraries)
    return [Request(RequestKind.PATH, path, reason) for path in found if path is not None]


FEATURE = Feature(
    name="pcrphase",
    help="systemd-pcrphase: extend TPM PCR 11 as the initrd starts and ends (measured UKIs)",
    units=("?systemd-pcrphase-initrd.service",),
    compute=_libraries,
    switch_on=SwitchOn(settings=("uki",)),
)
