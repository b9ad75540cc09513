"""A signed UKI boots under OVMF with Secure Boot enforcing; unsigned and foreign ones do not.

One boot proves all three: the test makes a PK, a KEK and a db key with openssl and
enrolls them into a copy of OVMF's variables (harness/secureboot.py), builds a UKI from
the Debian 13 tree signed with the db key (and with PCR 11 signatures), and gives the
Secure Boot firmware three ESPs in boot order: the same UKI with its signature removed,
then signed by a key the firmware does not know, then as bookend signed it. The firmware
must refuse the first two ("Access Denied") and start the third, which reaches the
bookworm root; a job there reads the SecureBoot EFI variable (1: enforcing) and
the kernel's lockdown state, which the test checks in what the guest wrote back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bookend.resolve import newest_kernel
from harness.guestjob import job_status, make_job_disk, read_job_output
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import BootOptions, Disk, boot
from harness.rootdisk import RootDisk
from harness.secureboot import enrolled_vars, make_esp, make_key_pair, missing_tools
from harness.token import expect_token, new_token
from harness.ukisysroot import ensure_trixie_sysroot

BOOT_LIMIT = 600
# Seconds from the firmware's first line to each refusal: OVMF checks a signature in
# well under a second even emulated, so a refusal that takes long is no refusal.
REFUSAL_LIMIT = 120
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
# The job prints SecureBoot's and SetupMode's value bytes (after the 4 attribute bytes)
# and the kernel's lockdown modes, and keeps them on its disk.
JOB = f"""#!/bin/sh
vars=/sys/firmware/efi/efivars
[ -e $vars/SecureBoot-{EFI_GLOBAL} ] || mount -t efivarfs efivarfs $vars
secure=$(od -An -tu1 -j4 -N1 $vars/SecureBoot-{EFI_GLOBAL} | tr -d ' ')
setup=$(od -An -tu1 -j4 -N1 $vars/SetupMode-{EFI_GLOBAL} | tr -d ' ')
lockdown=$(cat /sys/kernel/security/lockdown)
echo "SecureBoot=$secure SetupMode=$setup lockdown=$lockdown" | tee /job/out/secureboot
echo "BOOKEND-SECUREBOOT SecureBoot=$secure SetupMode=$setup" > /dev/console
"""


@pytest.fixture(scope="module")
def uki_sysroot() -> Path:
    if missing_tools():
        pytest.skip(f"missing {', '.join(missing_tools())} (scripts/setup)")
    return ensure_trixie_sysroot()


def test_signed_uki_boots_with_secure_boot_enforcing_unsigned_and_foreign_are_refused(
    uki_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(uki_sysroot)
    assert kver is not None
    db, other, pcr = (make_key_pair(tmp_path / "keys", name) for name in ("db", "other", "pcr"))
    variables = enrolled_vars(tmp_path / "keys", db)
    token = new_token()
    cmdline = (f"console=ttyS0 panic=-1 root=UUID={root_disk.uuid} rw "
               f"bookend.token={token} bookend.job")  # fmt: skip
    signed = tmp_path / "signed.efi"
    result = bookend("build", "--sysroot", str(uki_sysroot), "--kver", kver, "--uki",
                     "--cmdline", cmdline, "-o", str(signed), "--no-exitrd",
                     "--secureboot-key", str(db.key), "--secureboot-cert", str(db.cert),
                     "--pcr-private-key", str(pcr.key), *QEMU_VIRTIO_EXT4,
                     # The job reads the SecureBoot variable through efivarfs.
                     "--add-module", "efivarfs", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    unsigned = tmp_path / "unsigned.efi"
    shutil.copyfile(signed, unsigned)
    subprocess.run(["sbattach", "--remove", unsigned], check=True, capture_output=True)
    foreign = tmp_path / "foreign.efi"
    subprocess.run(["sbsign", "--key", other.key, "--cert", other.cert, "--output", foreign,
                    unsigned], check=True, capture_output=True)  # fmt: skip
    esps = [make_esp(tmp_path / f"{uki.stem}.esp", uki) for uki in (unsigned, foreign, signed)]
    job = make_job_disk(tmp_path / "job.img", JOB)
    disks: tuple[Disk | Path, ...] = (
        *(Disk(esp, bootindex=index) for index, esp in enumerate(esps)),
        root_disk.image,
        job,
    )
    options = BootOptions(secure_boot_vars=variables, disks=disks, timeout=BOOT_LIMIT,
                          log_path=console_log)  # fmt: skip
    with boot(options) as vm:
        for entry in ("Boot0001", "Boot0002"):  # the unsigned, then the foreign one
            vm.expect(rf"failed to load {entry} [^\n]*: Access Denied", timeout=REFUSAL_LIMIT)
        vm.expect(r"starting Boot0003 ", timeout=REFUSAL_LIMIT)
        vm.expect(r"EFI stub: UEFI Secure Boot is enabled", timeout=120)
        vm.expect(r"secureboot: Secure boot enabled", timeout=120)  # the kernel's own check
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=BOOT_LIMIT)
        printed = vm.expect(r"BOOKEND-JOB-STATUS (\d+)", timeout=BOOT_LIMIT)
        expect_token(vm, token, BOOT_LIMIT)
        seconds = vm.elapsed
    assert "starting Boot0001" not in vm.text and "starting Boot0002" not in vm.text
    assert printed.group(1) == "0" and job_status(job.path) == 0
    found = read_job_output(job.path, "secureboot", tmp_path / "secureboot").read_text()
    # Enforcing: SecureBoot 1 and user mode (a PK enrolled), and the kernel locked down.
    assert found.startswith("SecureBoot=1 SetupMode=0 lockdown="), found
    assert "[integrity]" in found or "[confidentiality]" in found, found
    print(f"secure boot: three ESPs to the root's token in {seconds:.0f} s")
