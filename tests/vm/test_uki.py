"""`bookend build --uki`: a UKI made by trixie's ukify, signed, boots under Secure Boot;
unsigned and foreign-signed copies of it are refused.

Debian 12 has no ukify, so the UKI is built from a cached Debian 13 tree
(harness/ukisysroot.py) with its kernel, stub, ukify and systemd-measure, signed with a
db key the test makes (and with PCR 11 signatures). One boot proves it all: the test
enrolls a PK, a KEK and that db key into a copy of OVMF's variables
(harness/secureboot.py) and gives OVMF's Secure Boot build three FAT ESPs in boot order:
the same UKI with its signature removed, then signed by a key the firmware does not
know, then as bookend signed it. The firmware must refuse the first two ("Access
Denied") and start the third with no command line from outside: the root and the
test's token reach the kernel only through the UKI's own .cmdline. The root disk is the
usual bookworm one, whose systemd reports the token after switch-root; a job there reads
the SecureBoot EFI variable (1: enforcing) and the kernel's lockdown state, which the
test checks in what the guest wrote back.

The same boot carries credentials from the ESP (issue 17): the signed UKI's ESP holds
one in EFI/BOOT/BOOTX64.EFI.extra.d/ (this UKI's) and one in loader/credentials/ (every
UKI's), each a random value encrypted by `systemd-creds encrypt --with-key=tpm2-absent`
(the null key: the machine has no TPM). systemd-stub (257) hands them to the initrd in
/.extra/, PID 1 keeps them in /run/credentials/@encrypted, and a unit in the initrd
(from the test's copy of the tree, `--add-unit`) takes both with
LoadCredentialEncrypted= and prints them; the root's job decrypts them again with the
root's systemd-creds (252), so they went on through switch-root.

And a system extension from the ESP (issue 17): a signed Verity image (harness/
verityext.py, signed by a key of the test's that neither the firmware nor the kernel
knows) in EFI/BOOT/BOOTX64.EFI.extra.d/, which systemd-stub hands to the initrd in
/.extra/sysext. bookend's feature signed-extensions is on by itself for this UKI (the
test's tree has libcryptsetup) and puts the key's certificate at
/etc/verity.d/verity.crt (--verity-certificate): systemd-sysext (257) sets up its
Verity device, checks the signature against that certificate and merges it, and the
initrd's unit runs the program only the image has, which prints a value the test chose.
Beside it an unsigned configuration extension (*.confext.raw, /.extra/confext) is
refused by systemd-confext's strict policy for the ESP's images, as the console says,
and its file is not in /etc. (An unsigned system extension beside the signed one would
fail systemd-sysext's whole merge, the signed one too: src/sysext/sysext.c.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookend.inspect.check import check_image
from bookend.resolve import newest_kernel
from harness.creds import encrypt_credential
from harness.guestjob import job_status, make_job_disk, read_job_output
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import Boot, BootOptions, Disk, boot
from harness.rootdisk import RootDisk
from harness.secureboot import KeyPair, enrolled_vars, make_esp, make_key_pair, missing_tools
from harness.token import expect_token, new_token
from harness.treecopy import put_file, squashfs_of, tree_with_files
from harness.treedebs import add_packages
from harness.ukisysroot import ensure_trixie_sysroot
from harness.verityext import verity_extension

BOOT_LIMIT = 900
# Seconds until the firmware tries its first boot entry (OVMF's start with SMM, emulated,
# on a loaded machine), then for each refusal: OVMF reads and hashes the 38 MB file
# (about 20 s, emulated); a refusal that takes much longer is no refusal.
FIRMWARE_LIMIT = 360
REFUSAL_LIMIT = 150
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
# The ESP's credentials, kept encrypted through switch-root, decrypted by the root's tools.
for name in espcred globalcred; do
    systemd-creds decrypt --name=$name /run/credentials/@encrypted/$name - > /job/out/$name
done
"""
ESP_UNIT = "bookend-espcred.service"
ESP_UNIT_FILE = """\
[Unit]
Description=bookend test: credentials and extensions systemd-stub brought from the ESP
After=systemd-sysext.service systemd-confext.service
Before=initrd.target

[Service]
Type=oneshot
LoadCredentialEncrypted=espcred
LoadCredentialEncrypted=globalcred
ExecStart=/bin/sh -c 'read -r u < "$$CREDENTIALS_DIRECTORY/espcred" || true; \\
read -r g < "$$CREDENTIALS_DIRECTORY/globalcred" || true; \\
echo "BOOKEND-ESPCRED uki=$$u global=$$g"'
ExecStart=/bin/sh -c 'bookend-verity-hello; \\
if [ -e /etc/bookend-unsigned.conf ]; then echo "BOOKEND-UNSIGNED merged"; \\
else echo "BOOKEND-UNSIGNED absent"; fi'
StandardOutput=journal+console

[Install]
WantedBy=initrd.target
"""
# Where systemd-stub looks for a UKI's own credentials and for every UKI's.
UKI_CREDS = "EFI/BOOT/BOOTX64.EFI.extra.d"
GLOBAL_CREDS = "loader/credentials"
# What systemd 257 dlopens to set up Verity (Debian 13's tree has it not: debootstrap
# takes no Recommends), with device-mapper's udev rules and dmsetup (feature dm).
VERITY_PACKAGES = ("libcryptsetup12", "libdevmapper1.02.1", "dmsetup", "libjson-c5")
# What systemd-sysext and -confext say goes to the console too: systemd's tools write to
# stderr (not straight to the journal) with SYSTEMD_LOG_TARGET=console. sysext's debug
# messages say which check passed the signature (the kernel's or its own).
SAID_ON_CONSOLE = (
    "[Service]\nEnvironment=SYSTEMD_LOG_TARGET=console\nStandardOutput=journal+console\n"
)
CONSOLE_DROPINS = {
    "/usr/lib/systemd/system/systemd-sysext.service.d/bookend-test.conf": (
        SAID_ON_CONSOLE + "Environment=SYSTEMD_LOG_LEVEL=debug\n", 0o644),
    "/usr/lib/systemd/system/systemd-confext.service.d/bookend-test.conf": (
        SAID_ON_CONSOLE, 0o644),
}  # fmt: skip


@pytest.fixture(scope="module")
def uki_sysroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The trixie tree with the test's initrd unit (a linked copy)."""
    if missing_tools():
        pytest.skip(f"missing {', '.join(missing_tools())} (scripts/setup)")
    copy = tmp_path_factory.mktemp("uki") / "sysroot"
    files = {f"/usr/lib/systemd/system/{ESP_UNIT}": (ESP_UNIT_FILE, 0o644), **CONSOLE_DROPINS}
    tree = ensure_trixie_sysroot()
    with tree_with_files(tree, copy, files) as root:
        add_packages(tree, root, VERITY_PACKAGES)
        yield root


def null_key_credential(sysroot: Path, name: str, value: str) -> bytes:
    """value as credential name, encrypted with the null key (for machines without a
    TPM; authenticates nothing)."""
    return encrypt_credential(sysroot, name, value, "--with-key=tpm2-absent")


def esp_extensions(directory: Path, signer: KeyPair, value: str) -> dict[str, bytes]:
    """A signed Verity system extension whose program prints value, and an unsigned
    configuration extension, as files of the UKI's .extra.d."""
    release = "ID=debian\nVERSION_ID=13\n"
    signed = directory / "signed-tree"
    put_file(signed, "/usr/lib/extension-release.d/extension-release.bookendverity",
             release + "SYSEXT_SCOPE=initrd\n")  # fmt: skip
    put_file(signed, "/usr/bin/bookend-verity-hello",
             f"#!/bin/sh\necho 'BOOKEND-VERITY-SYSEXT value={value}'\n", 0o755)  # fmt: skip
    verity_extension(directory / "bookendverity.raw", signed, signer)
    unsigned = directory / "unsigned-tree"
    put_file(unsigned, "/etc/extension-release.d/extension-release.bookendunsigned",
             release + "CONFEXT_SCOPE=initrd\n")  # fmt: skip
    put_file(unsigned, "/etc/bookend-unsigned.conf", "unsigned\n")
    plain = directory / "bookendunsigned.confext.raw"
    squashfs_of(unsigned, plain)
    return {f"{UKI_CREDS}/bookendverity.raw": (directory / "bookendverity.raw").read_bytes(),
            f"{UKI_CREDS}/{plain.name}": plain.read_bytes()}  # fmt: skip


def pe_sections(image: Path) -> dict[str, bytes]:
    pefile = pytest.importorskip("pefile")
    pe = pefile.PE(str(image), fast_load=True)
    return {s.Name.rstrip(b"\0").decode(): s.get_data().rstrip(b"\0") for s in pe.sections}


def refused_copies(signed: Path, other: KeyPair) -> tuple[Path, Path]:
    """signed with its signature removed, and that signed by another key."""
    unsigned = signed.with_name("unsigned.efi")
    shutil.copyfile(signed, unsigned)
    subprocess.run(["sbattach", "--remove", unsigned], check=True, capture_output=True)
    foreign = signed.with_name("foreign.efi")
    subprocess.run(["sbsign", "--key", other.key, "--cert", other.cert, "--output", foreign,
                    unsigned], check=True, capture_output=True)  # fmt: skip
    return unsigned, foreign


def test_signed_uki_boots_the_root_under_secure_boot_unsigned_and_foreign_are_refused(
    uki_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(uki_sysroot)
    assert kver is not None
    keys = ("db", "other", "pcr", "verity")
    db, other, pcr, verity = (make_key_pair(tmp_path / "keys", name) for name in keys)
    token = new_token()
    # no_timer_check: an emulated CPU on a loaded host can miss the kernel's early timer
    # interrupt test ("IO-APIC + timer doesn't work!", a panic), seen on q35 here.
    cmdline = (f"console=ttyS0 panic=-1 no_timer_check root=UUID={root_disk.uuid} rw "
               f"bookend.token={token} bookend.job")  # fmt: skip
    signed = tmp_path / "uki.efi"
    result = bookend("build", "--sysroot", str(uki_sysroot), "--kver", kver, "--uki",
                     "--cmdline", cmdline, "-o", str(signed), *QEMU_VIRTIO_EXT4,
                     "--secureboot-key", str(db.key), "--secureboot-cert", str(db.cert),
                     "--pcr-private-key", str(pcr.key),
                     # The job reads the SecureBoot variable through efivarfs.
                     "--add-module", "efivarfs", "--add-unit", ESP_UNIT,
                     "--verity-certificate", str(verity.cert),
                     check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    sections = pe_sections(signed)
    assert sections[".cmdline"].decode() == cmdline
    assert sections[".uname"].decode() == kver
    assert b"VERSION_CODENAME=trixie" in sections[".osrel"]  # the sysroot's, not the host's
    # PCR 11 signatures (tests/image/test_signed_uki.py verifies them).
    assert json.loads(sections[".pcrsig"])["sha256"][0]["pcrs"] == [11]
    # The exitrd is still a plain image beside the UKI.
    exitrd = tmp_path / f"exitrd.img-{kver}"
    assert check_image(exitrd).kind == "exitrd" and check_image(exitrd).problems == []

    uki_cred, global_cred, sysext_value = new_token(), new_token(), new_token()
    extra = {
        **esp_extensions(tmp_path / "extensions", verity, sysext_value),
        f"{UKI_CREDS}/espcred.cred": null_key_credential(uki_sysroot, "espcred", uki_cred),
        f"{GLOBAL_CREDS}/globalcred.cred": null_key_credential(
            uki_sysroot, "globalcred", global_cred
        ),
    }
    esps = [make_esp(tmp_path / f"{uki.stem}.esp", uki)
            for uki in refused_copies(signed, other)]  # fmt: skip
    esps.append(make_esp(tmp_path / "signed.esp", signed, extra))
    job = make_job_disk(tmp_path / "job.img", JOB)
    disks: tuple[Disk | Path, ...] = (
        *(Disk(esp, bootindex=index) for index, esp in enumerate(esps)),
        root_disk.image,
        job,
    )
    variables = enrolled_vars(tmp_path / "keys", db)
    options = BootOptions(secure_boot_vars=variables, disks=disks, timeout=BOOT_LIMIT,
                          log_path=console_log)  # fmt: skip
    with boot(options) as vm:
        through_the_firmware_and_stub(vm, kver)
        # The initrd's unit (ordered before initrd.target) decrypted both.
        vm.expect(f"BOOKEND-ESPCRED uki={uki_cred} global={global_cred}", timeout=240)
        # Merged from the ESP's signed image, after the signature checked out.
        vm.expect(f"BOOKEND-VERITY-SYSEXT value={sysext_value}", timeout=60)
        vm.expect("BOOKEND-UNSIGNED absent", timeout=60)
        vm.expect(r"Reached target .*initrd\.target", timeout=240)
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=180)
        printed = vm.expect(r"BOOKEND-JOB-STATUS (\d+)", timeout=BOOT_LIMIT)
        expect_token(vm, token, BOOT_LIMIT)
    assert "starting Boot0001" not in vm.text and "starting Boot0002" not in vm.text
    # The kernel knew not the key (neither built in nor the firmware's db): systemd
    # checked the signature itself, against the certificate bookend put in /etc/verity.d.
    assert "Userspace PKCS#7 validation succeeded." in vm.text
    # systemd-confext said why it refused the unsigned image.
    refusal = r"bookendunsigned[^\n]*[Dd]oes not match image policy"
    assert re.search(refusal, vm.text), "no refusal of the unsigned confext on the console"
    assert printed.group(1) == "0" and job_status(job.path) == 0
    found = read_job_output(job.path, "secureboot", tmp_path / "secureboot").read_text()
    # Enforcing: SecureBoot 1 and user mode (a PK enrolled), and the kernel locked down.
    assert found.startswith("SecureBoot=1 SetupMode=0 lockdown="), found
    assert "[integrity]" in found or "[confidentiality]" in found, found
    for name, value in (("espcred", uki_cred), ("globalcred", global_cred)):
        kept = read_job_output(job.path, name, tmp_path / name).read_text()
        assert kept.strip() == value, (name, kept)


def through_the_firmware_and_stub(vm: Boot, kver: str) -> None:
    vm.expect(r"BdsDxe: loading Boot0001 ", timeout=FIRMWARE_LIMIT)
    for entry in ("Boot0001", "Boot0002"):  # the unsigned, then the foreign one
        vm.expect(rf"failed to load {entry} [^\n]*: Access Denied", timeout=REFUSAL_LIMIT)
    vm.expect(r"starting Boot0003 ", timeout=REFUSAL_LIMIT)
    vm.expect(r"EFI stub: Loaded initrd", timeout=240)
    vm.expect(r"EFI stub: UEFI Secure Boot is enabled", timeout=60)
    vm.expect(rf"Linux version {kver.replace('+', '[+]')}", timeout=60)
    vm.expect(r"secureboot: Secure boot enabled", timeout=60)  # the kernel's own check
    # systemd 257 greets an initrd with "Booting initrd of", 252 with "Welcome to".
    vm.expect(r"(Welcome to|Booting initrd of) .*\(bookend initrd\)", timeout=240)
