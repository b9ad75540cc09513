"""Credentials: systemd's credentials for the initrd's services.

What the kernel command line (`systemd.set_credential=`, and with systemd 254 and later
`systemd.set_credential_binary=`), SMBIOS type 11 strings and QEMU's fw_cfg give, PID 1
imports itself into /run/credentials/@system before any unit starts; /run goes on to
the real root with switch-root, so nothing in the image is needed for them. A service
takes one with `LoadCredential=NAME` (systemd 252) or `ImportCredential=` (254 and
later). This feature embeds the credentials the configuration names, where both look
for them: /etc/credstore/NAME, and an encrypted one (a file named *.cred, as
`systemd-creds encrypt` writes them) in /etc/credstore.encrypted/NAME for
`LoadCredentialEncrypted=`. A credential is a secret: the image is written 0600.
"""

from __future__ import annotations

from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import Contribution, Feature, FeatureContext, Generated, SwitchOn

PLAIN_STORE = "/etc/credstore"
ENCRYPTED_STORE = "/etc/credstore.encrypted"
ENCRYPTED_SUFFIX = ".cred"


def store_path(name: str, file: str) -> str:
    """Where the credential NAME read from file goes in the image."""
    store = ENCRYPTED_STORE if file.endswith(ENCRYPTED_SUFFIX) else PLAIN_STORE
    return f"{store}/{name}"


def _credentials(context: FeatureContext) -> Contribution:
    config = context.config
    entries: list[Generated] = []
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
    return entries


FEATURE = Feature(
    name="credentials",
    help="systemd credentials embedded for the initrd's services (/etc/credstore); "
    "those from the kernel command line, SMBIOS and fw_cfg need nothing in the image",
    compute=_credentials,
    switch_on=SwitchOn(settings=("credentials",)),
)
