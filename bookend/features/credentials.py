"""Credentials: systemd's credentials for the initrd's services.

What the kernel command line (`systemd.set_credential=`, and with systemd 254 and later
`systemd.set_credential_binary=`), SMBIOS type 11 strings and QEMU's fw_cfg give, PID 1
imports itself into /run/credentials/@system before any unit starts; /run goes on to
the real root with switch-root. Nor does the image need anything for the *.cred files
systemd-stub brings from the ESP (/.extra/credentials and /.extra/global_credentials),
which PID 1 (252 and later) keeps encrypted in /run/credentials/@encrypted for
`LoadCredentialEncrypted=`. Only fw_cfg needs something in the image: Debian's
kernels build its driver as a module (qemu_fw_cfg), which PID 1 loads itself in a
virtual machine before it imports (/sys/firmware/qemu_fw_cfg), so the module comes
with the feature, hostonly or not (the build host need not be a guest). A service
takes one with `LoadCredential=NAME` (systemd 252) or `ImportCredential=` (254 and
later). This feature embeds the credentials the configuration names, where both look
for them: /etc/credstore/NAME, and an encrypted one (a file named *.cred, as
`systemd-creds encrypt` writes them) in /etc/credstore.encrypted/NAME for
`LoadCredentialEncrypted=`. A credential is a secret: the image is written 0600.

An encrypted credential names its key in its header: the first 16 bytes (of the base64
text `systemd-creds encrypt` writes, or of the raw file) are the id of the sealing
scheme. One sealed by a TPM2 (`--with-key=tpm2`, `host+tpm2`, or either with a
signed PCR policy) is decrypted by PID 1 in the initrd when the service starts, so the
image then takes what systemd needs to reach the TPM: the tpm drivers, the tss2
libraries it dlopens, and tpm2.target (systemd 256 and later) for the service to be
ordered after the TPM's device.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
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
from bookend.features.tpm2 import KIND as TPM2
from bookend.libsearch import loaded_by
from bookend.sysroot import Sysroot

PLAIN_STORE = "/etc/credstore"
ENCRYPTED_STORE = "/etc/credstore.encrypted"
ENCRYPTED_SUFFIX = ".cred"


# The ids of the sealing schemes that need a TPM2, as systemd-creds writes them.
TPM2_SEALED = frozenset(
    bytes.fromhex(key)
    for key in (
        "0c7cc07b117645919c4b0bea08bc20fe",  # tpm2
        "faf7eb9341e3412ca1a436f95a29362f",  # tpm2 with a signed PCR policy
        "93a894094874449090caf2fc93cab553",  # host+tpm2
        "ef4ac13679a9480ea7db68897f9f165d",  # host+tpm2, scoped to a user
        "af4950a849134eb1a73846304ff30c05",  # host+tpm2 with a signed PCR policy
        "adbc4ca3efb64201ba881b6f2e4095ea",  # the same, scoped to a user
    )
)
SYSTEMD = "/usr/lib/systemd/systemd"
# The header's first 16 bytes are the first 24 characters of base64 text (with no line
# break among them).
ID_TEXT = 24


def sealing_id(data: bytes) -> bytes:
    """The id of the scheme an encrypted credential is sealed with: from base64 text, or
    the raw file's first bytes (`systemd-creds encrypt` writes either)."""
    try:
        return base64.b64decode(data[:ID_TEXT], validate=True)[:16]
    except (binascii.Error, ValueError):
        return data[:16]


def tpm2_sealed(file: str) -> bool:
    """file is an encrypted credential that needs a TPM2 to decrypt."""
    if not file.endswith(ENCRYPTED_SUFFIX):
        return False
    with open(file, "rb") as stream:
        return sealing_id(stream.read(ID_TEXT)) in TPM2_SEALED


def _tpm2_requests(context: FeatureContext, names: list[str]) -> list[Request]:
    """What PID 1 needs in the initrd to decrypt credentials names with the TPM2."""
    reason = f"credentials: {', '.join(names)} sealed by a TPM2"
    sysroot = Sysroot(context.config.sysroot)
    requests = [
        Request(RequestKind.DRIVER_CLASS, "tpm", reason),
        Request(RequestKind.UNIT, "tpm2.target", reason, optional=True),
        Request(RequestKind.GENERATOR, "systemd-tpm2-generator", reason, optional=True),
    ]
    for soname in TPM2.libraries:
        # The service manager (through its executor) decrypts: found as its loader would.
        found = loaded_by(sysroot, SYSTEMD, soname)
        if found is None:
            raise SysrootError(
                f"credentials: {names[0]} is sealed by a TPM2, and the sysroot has no "
                f"{soname}, which systemd loads to decrypt it"
            )
        requests.append(Request(RequestKind.PATH, found, reason))
    return requests


def store_path(name: str, file: str) -> str:
    """Where the credential NAME read from file goes in the image."""
    store = ENCRYPTED_STORE if file.endswith(ENCRYPTED_SUFFIX) else PLAIN_STORE
    return f"{store}/{name}"


def _credentials(context: FeatureContext) -> Contribution:
    config = context.config
    entries: list[Generated | Request] = []
    stores = sorted(
        {store_path(name, file).rpartition("/")[0] for name, file in config.credentials}
    )
    for store in stores:
        # Only root may list the store, as systemd's tmpfiles make it on a host.
        directory = ArchiveEntry(store, EntryKind.DIRECTORY, 0o700)
        entries.append(Generated(directory, "feature credentials: the credential store"))
    for index, (name, file) in enumerate(config.credentials):
        origin = config.origin_of("credentials", index)
        entry = ArchiveEntry(store_path(name, file), EntryKind.FILE, 0o600, source=Path(file))
        reason = f"credentials ({origin}): credential {name} from {file}"
        entries.append(Generated(entry, reason, secret=True))
    sealed = [name for name, file in config.credentials if tpm2_sealed(file)]
    if sealed:
        entries += _tpm2_requests(context, sealed)
    return entries


FEATURE = Feature(
    name="credentials",
    help="systemd credentials embedded for the initrd's services (/etc/credstore), and "
    "qemu_fw_cfg for QEMU's fw_cfg credentials; those from the kernel command line and "
    "SMBIOS need nothing in the image",
    # Optional: built in, or absent from the kernel, it needs nothing.
    modules=("?qemu_fw_cfg",),
    compute=_credentials,
    switch_on=SwitchOn(settings=("credentials",)),
)
