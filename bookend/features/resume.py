"""Hibernation resume: systemd-hibernate-resume hands the swap holding a hibernation
image to the kernel before any filesystem is mounted.

systemd up to 254 has the generator start systemd-hibernate-resume@DEVICE.service for
resume=; 255 and later have systemd-hibernate-resume.service, which also finds the swap
through the HibernateLocation EFI variable systemd-sleep writes. Both are declared
optional: the image has whichever the sysroot's systemd ships. The swap's storage (LUKS,
LVM) is set up by the features serving it; hostonly detection follows active swaps down
their stacks (bookend.hostonly), so the swap's LUKS volume is in the image's crypttab.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import Contribution, Feature, FeatureContext, Generated, SwitchOn
from bookend.sysroot import Sysroot

HELPER = "/usr/lib/systemd/systemd-hibernate-resume"

# systemd 252's systemd-fsck-root.service is not ordered after local-fs-pre.target, which
# the resume service comes before: it could replay the journal of a filesystem a hibernated
# system still has mounted, before the kernel had a chance to resume that system.
FSCK_DROPIN = "/etc/systemd/system/systemd-fsck-root.service.d/bookend-resume.conf"
FSCK_AFTER_RESUME = """\
# Written by bookend: check the root only once a hibernated system had its chance to resume.
[Unit]
After=local-fs-pre.target
"""


def _fsck_after_resume(context: FeatureContext) -> Contribution:
    entry = ArchiveEntry(FSCK_DROPIN, EntryKind.FILE, 0o644, data=FSCK_AFTER_RESUME.encode())
    return [Generated(entry, "feature resume: no root check before the resume")]


def resume_named(cmdline: str) -> bool:
    """Whether a kernel command line asks for a resume: resume= and no noresume."""
    words = cmdline.split()
    return "noresume" not in words and any(word.startswith("resume=") for word in words)


def hostonly_wants_resume(context: FeatureContext) -> bool:
    """Hostonly: this machine has an active swap the kernel could resume from (systemd 255
    and later find it without resume=), or its command line, or the UKI's, names one; and
    the sysroot's systemd was built with hibernation support."""
    if context.detection is None or not Sysroot(context.config.sysroot).exists(HELPER):
        return False
    if context.detection.swap_devices:
        return True
    return any(resume_named(line) for line in context.command_lines())


FEATURE = Feature(
    name="resume",
    help="resume from hibernation (resume=, HibernateLocation) before the root is mounted",
    executables=(HELPER,),
    units=("?systemd-hibernate-resume@.service", "?systemd-hibernate-resume.service"),
    generators=("systemd-hibernate-resume-generator",),
    # Where HibernateLocation is read from: systemd loads the module itself at start-up on
    # an EFI boot (Debian builds efivarfs as a module).
    modules=("?efivarfs",),
    compute=_fsck_after_resume,
    switch_on=SwitchOn(program=HELPER, detected=hostonly_wants_resume),
)
