"""Issue 17, part A, in one boot: credentials, a system extension, the debug shell and an
rd.break stop, all in a systemd initrd built from the Debian 13 tree (systemd 257),
booting the usual Debian 12 root disk (systemd 252).

- Credentials: one by SMBIOS type 11 (QEMU's -smbios), one by
  `systemd.set_credential=` on the kernel command line, one embedded with
  `--credential` (in /etc/credstore), a binary one (a NUL, a 0xff, random bytes) by
  `systemd.set_credential_binary=` (base64) and one by QEMU's fw_cfg (`-fw_cfg
  name=opt/io.systemd.credentials/...`, read by PID 1 through the qemu_fw_cfg module the
  feature brings). A test package's service in the initrd loads the first three with
  LoadCredential= and the last two with one `ImportCredential=bookend.*` glob, and prints
  them (the binary one as its SHA-256); it also writes a unit into /run for the real
  root, whose systemd 252 loads the four given to the machine (the embedded one is the
  initrd's) with LoadCredential= after switch-root and prints them: the binary one too,
  which 252 cannot import from the command line itself.
- `--add-sysext`: a squashfs extension brings a program the initrd's service runs;
  its output comes only from the extension's file.
- A TPM2-sealed credential: `systemd-creds encrypt --with-key=tpm2` (the tree's
  systemd-creds 257, run in the tree with chroot) seals a random value on the host with
  swtpm (harness/tpm.host_tpm), the same TPM state the guest then gets; `--credential
  NAME=FILE.cred` embeds it in /etc/credstore.encrypted, and an initrd service takes it
  with LoadCredentialEncrypted= and prints it: PID 1 decrypted it through the guest's
  TPM. The tree has no tss2 libraries of its own: the test's copy gets trixie's
  (harness/treedebs.py).
- `--add-confext`: a squashfs configuration extension puts a file in the initrd's /etc
  (merged by systemd-confext.service); the same service prints the random value in it.
- `--add-feature debug` and `rd.systemd.debug_shell=ttyS1`: a root shell on the second
  serial port, where the test runs a command and reads its result.
- `rd.break=pre-mount` (with `--emergency-shell unlocked`): the boot stops before the
  root is mounted; the test runs a command in the shell on the console, leaves it, and
  the boot goes on to the real root's token.
Each check is a value the guest computed (the credentials are random), so a service
that did not run, an extension not merged, or a shell that did not answer fails it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bookend.features.credentials import sealing_id
from bookend.resolve import newest_kernel
from harness.creds import encrypt_credential
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import Boot, BootOptions, boot
from harness.rootdisk import RootDisk
from harness.token import expect_token, new_token, with_token
from harness.tpm import host_tpm, software_tpm
from harness.treecopy import put_file, squashfs_of, tree_with_files
from harness.treedebs import add_packages
from harness.ukisysroot import ensure_trixie_sysroot

BOOT_LIMIT = 900
INITRD_UNIT = "bookend-creds-initrd.service"
TPM_UNIT = "bookend-creds-tpm.service"
TPM_UNIT_FILE = """\
[Unit]
Description=bookend test: a TPM2-sealed credential in the initrd
Wants=tpm2.target
After=tpm2.target
Before=initrd.target

[Service]
Type=oneshot
LoadCredentialEncrypted=tpmcred
ExecStart=/bin/sh -c 'read -r t < "$$CREDENTIALS_DIRECTORY/tpmcred" || true; \
echo "BOOKEND-CRED-TPM2 in=initrd value=$$t"'
StandardOutput=journal+console

[Install]
WantedBy=initrd.target
"""
# Trixie's tss2 libraries: what systemd 257 dlopens, and the TCTI that reaches swtpm from
# the host.
TSS2_PACKAGES = (
    "libtss2-esys-3.0.2-0t64", "libtss2-mu-4.0.1-0t64", "libtss2-rc0t64", "libtss2-sys1t64",
    "libtss2-tcti-device0t64", "libtss2-tcti-swtpm0t64",
)  # fmt: skip
TPM2_HMAC = bytes.fromhex("0c7cc07b117645919c4b0bea08bc20fe")  # --with-key=tpm2
ROOT_UNIT = "bookend-creds-root.service"
INITRD_UNIT_FILE = """\
[Unit]
Description=bookend test: credentials and a system extension in the initrd
After=systemd-sysext.service systemd-confext.service
Before=initrd.target

[Service]
Type=oneshot
LoadCredential=smbcred
LoadCredential=cmdcred
LoadCredential=embcred
# systemd 254 and later: by a glob, the binary one from the kernel command line and the
# one from QEMU's fw_cfg.
ImportCredential=bookend.*
ExecStart=bookend-creds-initrd
StandardOutput=journal+console

[Install]
WantedBy=initrd.target
"""
# Shell builtins, and what --add-file brings (mkdir, cp, ln).
INITRD_HELPER = f"""\
#!/bin/sh
set -eu
# A credential need not end in a newline: read then fails, having read it.
read -r smb < "$CREDENTIALS_DIRECTORY/smbcred" || true
read -r cmd < "$CREDENTIALS_DIRECTORY/cmdcred" || true
read -r emb < "$CREDENTIALS_DIRECTORY/embcred" || true
echo "BOOKEND-CRED in=initrd smb=$smb cmd=$cmd emb=$emb"
read -r fw < "$CREDENTIALS_DIRECTORY/bookend.fw" || true
bin=$(sha256sum < "$CREDENTIALS_DIRECTORY/bookend.bin")
echo "BOOKEND-CRED-IMPORTED in=initrd fw=$fw bin=${{bin%% *}}"
bookend-sysext-hello "$cmd"
read -r conf < /etc/bookend-confext.conf
echo "BOOKEND-CONFEXT in=initrd value=$conf"
mkdir -p /run/systemd/system/multi-user.target.wants
cp /usr/share/bookend-test/{ROOT_UNIT} /run/systemd/system/
ln -sf ../{ROOT_UNIT} /run/systemd/system/multi-user.target.wants/{ROOT_UNIT}
"""
ROOT_UNIT_FILE = """\
[Unit]
Description=bookend test: the machine's credentials in the real root
Before=bookend-test-report.service

[Service]
Type=oneshot
LoadCredential=smbcred
LoadCredential=cmdcred
LoadCredential=bookend.fw
LoadCredential=bookend.bin
ExecStart=/bin/sh -c 'read -r s < "$$CREDENTIALS_DIRECTORY/smbcred"; \
read -r c < "$$CREDENTIALS_DIRECTORY/cmdcred"; \
read -r f < "$$CREDENTIALS_DIRECTORY/bookend.fw" || true; \
b=$$(sha256sum < "$$CREDENTIALS_DIRECTORY/bookend.bin"); \
echo "BOOKEND-CRED in=root smb=$$s cmd=$$c fw=$$f bin=$${b%%%% *}" > /dev/ttyS0'
"""
PACKAGE_FILES = {
    f"/usr/lib/systemd/system/{INITRD_UNIT}": (INITRD_UNIT_FILE, 0o644),
    f"/usr/lib/systemd/system/{TPM_UNIT}": (TPM_UNIT_FILE, 0o644),
    "/usr/local/bin/bookend-creds-initrd": (INITRD_HELPER, 0o755),
    f"/usr/share/bookend-test/{ROOT_UNIT}": (ROOT_UNIT_FILE, 0o644),
}
# What the initrd's helper runs besides shell builtins.
TOOLS = tuple(arg for tool in ("mkdir", "cp", "ln", "sha256sum")
              for arg in ("--add-file", f"/usr/bin/{tool}"))  # fmt: skip
EXTENSION_PROGRAM = """\
#!/bin/sh
echo "BOOKEND-SYSEXT merged-from-extension arg=$1"
"""


@pytest.fixture(scope="module")
def initrd_sysroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    copy = tmp_path_factory.mktemp("creds") / "sysroot"
    tree = ensure_trixie_sysroot()
    with tree_with_files(tree, copy, PACKAGE_FILES) as root:
        add_packages(tree, root, TSS2_PACKAGES)
        yield root


def seal_with_tpm2(sysroot: Path, state: Path, name: str, value: str) -> bytes:
    """value sealed as credential name by the TPM whose state is state."""
    with host_tpm(state) as tcti:
        return encrypt_credential(sysroot, name, value, "--with-key=tpm2",
                                  f"--tpm2-device={tcti}", "--tpm2-pcrs=")  # fmt: skip


def squashfs_image(image: Path, files: dict[str, tuple[str, int]]) -> Path:
    """A squashfs image at image holding files (path: (text, mode)), owned by root."""
    tree = image.with_suffix(".tree")
    for path, (text, mode) in files.items():
        put_file(tree, path, text, mode)
    return squashfs_of(tree, image)


def make_extension(directory: Path) -> Path:
    """A squashfs system extension for the Debian 13 initrd, with one program."""
    release = "ID=debian\nVERSION_ID=13\nSYSEXT_SCOPE=initrd\n"
    return squashfs_image(directory / "hello.raw", {
        "usr/lib/extension-release.d/extension-release.hello": (release, 0o644),
        "usr/bin/bookend-sysext-hello": (EXTENSION_PROGRAM, 0o755),
    })  # fmt: skip


def make_confext(directory: Path, value: str) -> Path:
    """A squashfs configuration extension for the Debian 13 initrd: one file in /etc."""
    release = "ID=debian\nVERSION_ID=13\nCONFEXT_SCOPE=initrd\n"
    return squashfs_image(directory / "helloconf.raw", {
        "etc/extension-release.d/extension-release.helloconf": (release, 0o644),
        "etc/bookend-confext.conf": (value + "\n", 0o644),
    })  # fmt: skip


class SerialPort:
    """The guest's ttyS1, on a Unix socket QEMU listens on."""

    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 60
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(os.fspath(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.text = ""

    def expect(self, wanted: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"ttyS1 never showed {wanted!r}; it showed {self.text[-2000:]!r}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            assert data, f"ttyS1 closed; it showed {self.text[-2000:]!r}"
            self.text += data.decode(errors="replace")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())


def test_credentials_sysext_debug_shell_and_rd_break(
    initrd_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(initrd_sysroot)
    assert kver is not None
    smb, cmd, emb, conf, tpm, fw = (new_token() for _ in range(6))
    # Binary: a NUL and bytes that are no text; the guest prints their SHA-256.
    binary = b"\0\xff\n" + os.urandom(16)
    bin_sum = hashlib.sha256(binary).hexdigest()
    (tmp_path / "embcred").write_text(emb + "\n")
    state = tmp_path / "tpm-state"
    sealed = seal_with_tpm2(initrd_sysroot, state, "tpmcred", tpm + "\n")
    assert sealing_id(sealed) == TPM2_HMAC and tpm.encode() not in sealed
    (tmp_path / "tpmcred.cred").write_bytes(sealed)
    initrd = tmp_path / "initrd.img"
    result = bookend("build", "--sysroot", str(initrd_sysroot), "--kver", kver, "-o", str(initrd),
                     "--no-exitrd", "--add-unit", INITRD_UNIT, *QEMU_VIRTIO_EXT4,
                     "--credential", f"embcred={tmp_path / 'embcred'}",
                     "--add-unit", TPM_UNIT,
                     "--credential", f"tpmcred={tmp_path / 'tpmcred.cred'}",
                     "--add-sysext", str(make_extension(tmp_path)),
                     "--add-confext", str(make_confext(tmp_path, conf)),
                     "--add-feature", "debug", "--emergency-shell", "unlocked",
                     *TOOLS,
                     "--add-file", f"/usr/share/bookend-test/{ROOT_UNIT}",
                     check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert initrd.stat().st_mode & 0o777 == 0o600  # it holds a credential
    # A module in Debian 13's kernel: PID 1 reads fw_cfg only once it has loaded it.
    assert "/drivers/firmware/qemu_fw_cfg.ko" in bookend("ls", str(initrd)).stdout

    token = new_token()
    serial = tmp_path / "ttyS1.sock"
    append = (f"root=UUID={root_disk.uuid} rw systemd.set_credential=cmdcred:{cmd} "
              f"systemd.set_credential_binary=bookend.bin:{base64.b64encode(binary).decode()} "
              "rd.systemd.debug_shell=ttyS1 rd.break=pre-mount")  # fmt: skip
    options = BootOptions(
        kernel=initrd_sysroot / f"boot/vmlinuz-{kver}", initrd=initrd, disks=(root_disk.image,),
        append=append, timeout=BOOT_LIMIT, log_path=console_log,
        plain_devices=("-smbios", f"type=11,value=io.systemd.credential:smbcred={smb}",
                       "-fw_cfg", f"name=opt/io.systemd.credentials/bookend.fw,string={fw}",
                       "-chardev", f"socket,id=ttyS1,path={serial},server=on,wait=off",
                       "-serial", "chardev:ttyS1"),
    )  # fmt: skip
    with (
        software_tpm(state) as tpm_devices,
        boot(with_token(replace(options, devices=tpm_devices), token)) as vm,
    ):
        port = SerialPort(serial)
        vm.expect(f"BOOKEND-CRED in=initrd smb={smb} cmd={cmd} emb={emb}", 400)
        vm.expect(f"BOOKEND-CRED-IMPORTED in=initrd fw={fw} bin={bin_sum}", 60)
        vm.expect(f"BOOKEND-SYSEXT merged-from-extension arg={cmd}", 60)
        vm.expect(f"BOOKEND-CONFEXT in=initrd value={conf}", 60)
        # The debug shell: a root shell on ttyS1 while the boot waits at its break.
        port.send("echo BOOKEND-DEBUG $((6 * 7))\n")
        port.expect("BOOKEND-DEBUG 42", 120)
        break_shell(vm)
        vm.expect(f"BOOKEND-CRED in=root smb={smb} cmd={cmd} fw={fw} bin={bin_sum}\n", 400)
        # Its own service, in no fixed order with the others: done before switch-root.
        assert f"BOOKEND-CRED-TPM2 in=initrd value={tpm}" in vm.text
        expect_token(vm, token, 300)


def break_shell(vm: Boot) -> None:
    """rd.break=pre-mount stopped the boot with a shell on the console: use it (the root
    is not mounted yet), then leave it. The stop may come before or after the lines
    expected so far, so the command is typed until the shell answers: a line typed
    before the shell runs is taken by sulogin's "Press Enter" or flushed."""
    command = (
        "n=0; while read -r d m r; do [ $m = /sysroot ] && n=1; done < /proc/mounts; "
        "echo BOOKEND-BREAK $((6 * 8)) sysroot-mounted=$n\n"
    )
    attempts = 30
    for attempt in range(attempts):
        vm.send(command)
        try:
            vm.expect("BOOKEND-BREAK 48 sysroot-mounted=0", 10)
            break
        except AssertionError:
            if attempt == attempts - 1:
                raise
    assert "bookend: rd.break=pre-mount: stopped" in vm.text
    vm.send("exit\n")
