"""Host secrets that never enter an image by accident.

An initrd sits unencrypted in /boot and is readable by whoever gets the disk. So the
files below are kept out even when a directory or a feature would pull them in (the
public halves of ssh host keys go in, the private halves do not), and go in only when
the configuration names them exactly: `files` or `keyfiles`. An image holding one is
written mode 0600 and its manifest lists them, so `bookend ls` can mark them.
"""

from __future__ import annotations

import fnmatch

from bookend.sysroot import Sysroot

DENYLIST = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssh/ssh_host_key",  # SSH protocol 1
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/var/lib/systemd/random-seed",
    "/var/lib/urandom/random-seed",
    "/var/lib/systemd/credential.secret",
    "/etc/cryptsetup-keys.d/*",
    "/etc/ssl/private/*",
    # open-iscsi: CHAP credentials (iscsid.conf, node and discovery records)
    "/etc/iscsi/iscsid.conf",
    "/etc/iscsi/nodes/*",
    "/etc/iscsi/send_targets/*",
    "/var/lib/iscsi/nodes/*",  # open-iscsi 2.1.10 and later keep the records here
    "/var/lib/iscsi/send_targets/*",
)


def crypttab_keyfiles(crypttab: str) -> list[str]:
    """The key files crypttab(5) names: the third field, when it is a path."""
    keyfiles = []
    for line in crypttab.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#"):
            keyfile = fields[2].split(":")[0]  # "PATH:DEVICE" reads the key from DEVICE
            if keyfile.startswith("/") and not keyfile.startswith("/dev/"):
                keyfiles.append(keyfile)
    return keyfiles


class Secrets:
    """Which canonical image paths of one sysroot are secret."""

    def __init__(self, sysroot: Sysroot) -> None:
        self.sysroot = sysroot
        keyfiles = crypttab_keyfiles(sysroot.read_text("/etc/crypttab") or "")
        self.patterns = (*DENYLIST, *keyfiles)
        self.canonical = {sysroot.resolve(p).path for p in self.patterns if "*" not in p}

    def is_secret(self, path: str) -> bool:
        """path is canonical (resolved in the sysroot), so links to a secret count too."""
        if path in self.canonical:
            return True
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.patterns)
