"""The feature registry: every feature of bookend's own, by name.

Most are Python modules; those that only declare are feature files shipped in the
package (bookend/data/features.d, read by bookend.features.datafiles), as a user's
feature would be written.
"""

from bookend.features import (
    activation,
    credentials,
    debug,
    emergency,
    extensions,
    fido2,
    filesystems,
    hooks,
    iscsi,
    kmod,
    luks,
    lvm,
    mdraid,
    nbd,
    network,
    nfs,
    pcrphase,
    pkcs11,
    plymouth,
    release,
    repart,
    resume,
    signed_extensions,
    ssh,
    storage_daemons,
    systemd,
    tpm2,
    udev,
    units,
    usr,
    vconsole,
    verity,
)
from bookend.features.base import Feature
from bookend.features.datafiles import shipped_features

SHIPPED = shipped_features()

# In the order the plan switches them on within each group (always, configured,
# storage, settings), so the plan and the images read the same run after run. A
# feature file shipped later and not placed here comes last.
_ORDER: tuple[Feature, ...] = (
    systemd.FEATURE,
    udev.FEATURE,
    kmod.FEATURE,
    filesystems.FEATURE,
    emergency.FEATURE,
    release.FEATURE,
    usr.FEATURE,
    repart.FEATURE,
    SHIPPED["dm"],
    luks.FEATURE,
    verity.FEATURE,
    tpm2.FEATURE,
    fido2.FEATURE,
    pkcs11.FEATURE,
    plymouth.FEATURE,
    lvm.FEATURE,
    mdraid.FEATURE,
    SHIPPED["btrfs"],
    SHIPPED["sysroot-share"],
    resume.FEATURE,
    network.FEATURE,
    nbd.FEATURE,
    iscsi.FEATURE,
    nfs.FEATURE,
    ssh.FEATURE,
    activation.FEATURE,
    hooks.FEATURE,
    storage_daemons.FEATURE,
    units.FEATURE,
    vconsole.FEATURE,
    pcrphase.FEATURE,
    credentials.FEATURE,
    extensions.FEATURE,
    signed_extensions.FEATURE,
    debug.FEATURE,
)
ALL: dict[str, Feature] = {feature.name: feature for feature in (*_ORDER, *SHIPPED.values())}

# Every initrd gets these (and what they require); `bookend features` marks them.
DEFAULT = tuple(name for name, feature in ALL.items() if feature.switch_on.always)
