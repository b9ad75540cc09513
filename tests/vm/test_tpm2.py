"""TPM2 unlock with systemd's own parts: a LUKS2 root enrolled with systemd-cryptenroll in
a software TPM (swtpm, harness/tpm.py) opens in a bookend initrd with the tpm2 feature.

The disks and the TPM state are made once in a maker guest (harness/tpmdisks.py); each
boot runs swtpm on a private copy of that state. The volumes are bound to PCR 1, which
SeaBIOS fills from the SMBIOS tables: the same `-smbios` as at enrollment unlocks, another
serial number changes the PCR and the passphrase prompt must come instead.
Run with `-rP` to see each boot's image size and time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.netroot import SYSTEMD_START, record_scenario
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.token import Booted, boot_to_token
from harness.tpm import copy_state, software_tpm
from harness.tpmdisks import (
    CHANGED_SMBIOS,
    ENROLLED_SMBIOS,
    TPM_CPUS,
    TPM_MEMORY_MIB,
    TpmDisks,
    ensure_tpm_disks,
)
from tests.vm.conftest import BOOT_LIMIT

PASSPHRASE_PROMPT = r"Please enter passphrase for disk"
PIN_PROMPT = r"Please enter .*PIN"
WELCOME = r"Welcome to .*\(bookend initrd\)"


@pytest.fixture(scope="session")
def tpm_disks(kernel: Kernel, root_disk: RootDisk) -> TpmDisks:
    return ensure_tpm_disks(kernel, root_disk)


@pytest.fixture(scope="session")
def tpm2_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host's initrd for a virtio disk with the tpm2 feature (luks comes with it)."""
    output = tmp_path_factory.mktemp("tpm2") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4, "--add-feature", "tpm2")


def boot_with_tpm(
    kernel: Kernel,
    initrd: Path,
    disk: Path,
    tpm_disks: TpmDisks,
    tmp_path: Path,
    smbios: Sequence[str],
    answer: tuple[str, str] | None = None,
) -> Booted:
    """Boot disk with a copy of the enrolled TPM; answer: (prompt, text) to type."""
    options = BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        disks=(Disk(disk),),
        # A generic command line: nothing in the image names the volume or its token.
        append=f"{tpm_disks.cmdline} rd.luks.options=tpm2-device=auto rw",
        memory_mib=TPM_MEMORY_MIB,
        cpus=TPM_CPUS,
        timeout=BOOT_LIMIT,
        log_path=tmp_path / "console.log",
    )

    def type_answer(vm: Boot) -> None:
        vm.expect(WELCOME, timeout=300)
        if answer is not None:
            prompt, text = answer
            vm.expect(prompt, timeout=300)
            vm.send(text + "\n")

    state = copy_state(tpm_disks.tpm_state, tmp_path / "tpm-state")
    with software_tpm(state) as tpm_devices:
        options = replace(options, devices=(*smbios, *tpm_devices))
        booted = boot_to_token(options, on_the_way=type_answer)
    assert not booted.failed_units, f"units failed; see {options.log_path}"
    return booted


def initrd_part(console: str) -> str:
    """The console up to the real root's systemd (the second to start)."""
    starts = [match.start() for match in SYSTEMD_START.finditer(console)]
    assert len(starts) >= 2, "the console shows no systemd started after switching root"
    return console[: starts[1]]


def test_tpm2_enrolled_root_unlocks_with_no_prompt(
    kernel: Kernel, tpm2_initrd: Path, tpm_disks: TpmDisks, tmp_path: Path
) -> None:
    booted = boot_with_tpm(
        kernel, tpm2_initrd, tpm_disks.plain, tpm_disks, tmp_path, ENROLLED_SMBIOS
    )
    assert not re.search(PASSPHRASE_PROMPT, booted.text), "asked for the passphrase"
    assert not re.search(PIN_PROMPT, booted.text), "asked for a PIN"
    assert re.search(r"Finished .*Cryptography Setup for root_crypt", initrd_part(booted.text))
    scenario = record_scenario("luks2 root, tpm2 unlock", booted.text, tpm2_initrd)
    print(f"tpm2 unlock: image {tpm2_initrd.stat().st_size / 1e6:.1f} MB, "
          f"switch-root {scenario.switch_root_s:.1f} s, boot {booted.seconds:.0f} s")  # fmt: skip


def test_a_changed_pcr_falls_back_to_the_passphrase(
    kernel: Kernel, tpm2_initrd: Path, tpm_disks: TpmDisks, tmp_path: Path
) -> None:
    answer = (PASSPHRASE_PROMPT, tpm_disks.passphrase)
    booted = boot_with_tpm(
        kernel, tpm2_initrd, tpm_disks.plain, tpm_disks, tmp_path, CHANGED_SMBIOS, answer
    )
    assert re.search(r"Finished .*Cryptography Setup for root_crypt", initrd_part(booted.text))
    print(f"tpm2 fallback to the passphrase: boot {booted.seconds:.0f} s")


def test_a_tpm2_pin_volume_asks_for_the_pin(
    kernel: Kernel, tpm2_initrd: Path, tpm_disks: TpmDisks, tmp_path: Path
) -> None:
    answer = (PIN_PROMPT, tpm_disks.pin)
    booted = boot_with_tpm(
        kernel, tpm2_initrd, tpm_disks.with_pin, tpm_disks, tmp_path, ENROLLED_SMBIOS, answer
    )
    assert not re.search(PASSPHRASE_PROMPT, booted.text), "asked for the passphrase"
    print(f"tpm2+pin unlock: boot {booted.seconds:.0f} s")
