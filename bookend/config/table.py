"""The settings table: each setting declared once, as a field of Config.

The field's name is the TOML key (and, with dashes, the flag), its type is the type the
build reads, and its `setting(...)` metadata holds the rest: the help, the TOML default,
the flag's spelling, the check of its form and how `config show` prints it. The CLI
flags, the shell completion, `config show`, the up-to-date fingerprint and the merge of
configuration files are all generated from SETTINGS, the fields in order.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from bookend.archive.compress import DEFAULT_LEVELS, EXITRD_DEFAULT_LEVELS, Compression
from bookend.completion import KERNELS
from bookend.sshkeys import looks_inline
from bookend.suggest import did_you_mean


class ModuleMode(enum.Enum):
    """Which kernel modules an image carries, as dracut's --hostonly and --no-hostonly."""

    HOSTONLY = "hostonly"  # what this machine needs for its root and /usr
    GENERIC = "generic"  # every storage, filesystem and keyboard driver: boots anywhere


class EmergencyAccess(enum.Enum):
    """Who may use the emergency shell when the boot fails."""

    LOCKED = "locked"  # root has no usable password: sulogin refuses
    UNLOCKED = "unlocked"  # anyone at the console gets a root shell
    PASSWORD = "password"  # root's password is the configured crypt(3) hash


class SshServer(enum.Enum):
    """Which SSH server the ssh feature puts into the initrd."""

    AUTO = "auto"  # dropbear where the sysroot has it (smaller), else OpenSSH's sshd
    DROPBEAR = "dropbear"
    OPENSSH = "openssh"


class SshHostKeys(enum.Enum):
    """Where the initrd's SSH host keys come from."""

    GENERATE = "generate"  # made once for bookend's images, kept in its state directory
    HOST = "host"  # the sysroot's own host keys: the image is then written 0600


# The points dracut users know hooks by, in boot order.
HOOK_POINTS = ("cmdline", "pre-udev", "pre-trigger", "pre-mount", "mount", "pre-pivot")

# A problem with one value (each item, for a list), or None when it is good; it is
# called with a value of the setting's TOML type.
FormCheck = Callable[[Any], str | None]


@dataclass(frozen=True)
class Setting:
    """What the table says of one setting besides its name and type."""

    help: str
    default: Any  # as TOML spells it ("zstd", "/"); None: unset, or worked out later
    flag: str = ""  # "" for --KEY (underscores as dashes)
    short: str | None = None
    metavar: str = "VALUE"
    off_help: str = ""  # a bool: the help of --no-FLAG
    choice_flags: Mapping[str, str] = field(default_factory=dict)  # value -> help of --VALUE
    check: FormCheck | None = None  # the form of the value, or of each item of a list
    parse_item: Callable[[str], Any] | None = None  # a list item, once its form is good
    unique: bool = True  # a list keeps each item once, as first given
    vocabulary: str = ""  # items must be names the caller knows, e.g. "feature"
    show: Callable[[Config], Any] | None = None  # the value `config show` prints
    show_item: Callable[[Any], str] | None = None  # a list item as TOML spells it
    complete: str | tuple[str, ...] = ""  # completion: a kind (KERNELS) or the words
    image_input: bool = True  # False: decides whether to write, not what is written
    # Filled in from the field by _declared():
    key: str = ""
    kind: type = str  # what TOML holds: str, int, bool or list (of strings)
    choices: tuple[str, ...] = ()  # an enum's values
    convert: Callable[[str], Any] = str  # a string as the field's type (Path, an enum)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")


def setting(help: str, default: Any = None, **declared: Any) -> Any:
    """A field of Config that is a setting (typed Any so each field keeps its own type)."""
    return field(metadata={"setting": Setting(help, default, **declared)})


def matching(form: str, example: str) -> FormCheck:
    """A check that a name has the form it takes in the files the image writes."""
    pattern = re.compile(form)

    def check(name: str) -> str | None:
        return None if pattern.fullmatch(name) else f"{_short(name)!r} is not {example}"

    return check


def absolute_path(name: str) -> str | None:
    return None if name.startswith("/") else f"'{name}' is not an absolute path"


# A unit name as systemd spells it on disk (no '/', no spaces), of a kind one can add.
UNIT_NAME = r"[A-Za-z0-9_.\\@-]+\.(service|socket|target|timer|path|mount)"
# UNIT[:TARGET]: both names become paths in the image: no '/', no spaces; ':' only parts them.
UNIT_ITEM = rf"{UNIT_NAME}(:[A-Za-z0-9_.\\@-]+\.target)?"


def parse_unit_item(item: str) -> tuple[str, str | None]:
    """UNIT[:TARGET] as (unit, target); no target: the unit's [Install] section says."""
    unit, _, target = item.partition(":")
    return unit, target or None


# A credential's name as systemd accepts one: a file name of at most 255 bytes.
CREDENTIAL_NAME = r"[A-Za-z0-9_.:@+-]{1,255}"


def credential_problem(item: str) -> str | None:
    """NAME=FILE: NAME a credential name, FILE a path on the building machine."""
    name, sep, path = item.partition("=")
    if not sep or not path:
        return f"'{_short(item)}' is not NAME=FILE"
    if not re.fullmatch(CREDENTIAL_NAME, name) or name in (".", ".."):
        return f"'{_short(name)}' is not a credential name (letters, digits and _.:@+-)"
    return None


def parse_credential(item: str) -> tuple[str, str]:
    """NAME=FILE as (name, absolute path of FILE, relative to the current directory)."""
    name, _, path = item.partition("=")
    return name, os.path.abspath(path)


def hook_problem(hook: str) -> str | None:
    point, sep, command = hook.partition("=")
    point = point.strip()
    if not sep or not command.strip():
        return f"'{hook}' is not POINT=COMMAND"
    if point not in HOOK_POINTS:
        return f"unknown hook point '{point}'" + did_you_mean(point, HOOK_POINTS)
    return None


def parse_hook(hook: str) -> tuple[str, str]:
    point, _, command = hook.partition("=")
    return point.strip(), command.strip()


def emergency_shell_problem(value: str) -> str | None:
    # A crypt(3) hash: $id$...; anything else is almost certainly a typo or a plain password.
    if value in ("locked", "unlocked") or re.fullmatch(r"\$[0-9a-z]+\$[^\s:]+", value):
        return None
    return (
        "expected 'locked', 'unlocked' or a crypt(3) password hash such as one from "
        "`openssl passwd -6`" + did_you_mean(value, ["locked", "unlocked"])
    )


def authorized_key_problem(item: str) -> str | None:
    """An inline public key (its content is checked with the files', by resolve) or an
    absolute path of an authorized_keys file on the machine running bookend."""
    if looks_inline(item) or item.startswith("/"):
        return None
    return f"{_short(item)!r} is neither an SSH public key nor an absolute path of a key file"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exitrd_level(config: Config) -> int:
    """The level the exitrd is compressed at: its own setting, else its compressor's
    exitrd default (bookend.archive.compress.EXITRD_DEFAULT_LEVELS)."""
    if config.exitrd_compress_level is not None:
        return config.exitrd_compress_level
    return EXITRD_DEFAULT_LEVELS[config.exitrd_compress]


@dataclass(frozen=True)
class Config:
    """The checked configuration every later stage reads; one field per setting."""

    sysroot: Path = setting("root tree to build from", "/", metavar="DIR")
    kver: str = setting(
        "kernel version (default: newest under the sysroot's /lib/modules)",
        metavar="VERSION",
        complete=KERNELS,
    )
    output: Path = setting(
        "where to write the initrd (default: ./bookend-initrd-KVER.img)",
        short="-o",
        metavar="FILE",
    )
    compress: Compression = setting("compression of the image", "zstd", metavar="NAME")
    compress_level: int | None = setting(
        "compression level",
        metavar="N",
        # Unset, the compressor's own default: shown, since that is what is used.
        show=lambda config: (
            DEFAULT_LEVELS[config.compress]
            if config.compress_level is None
            else config.compress_level
        ),
    )
    compress_threads: int = setting(
        "zstd's and lz4's worker threads, 0 for one per CPU core (xz and gzip use one)",
        0,
        metavar="N",
        check=lambda threads: (
            None if 0 <= threads <= 256 else f"{threads} is not a number of threads (0..256)"
        ),
        # zstd and lz4 write the same bytes whatever the number of workers: not an input.
        image_input=False,
    )
    exitrd_compress: Compression = setting(
        "compression of the exitrd, whatever the initrd's: install-exitrd unpacks it once "
        "and shutdown copies that tree, so it costs build time and space, not shutdown time",
        "zstd",
        metavar="NAME",
    )
    exitrd_compress_level: int | None = setting(
        "the exitrd's compression level (default: 3 for zstd, else as compress_level's)",
        metavar="N",
        show=lambda config: exitrd_level(config),
    )
    features: tuple[str, ...] = setting(
        "extra features to enable (see `bookend features`)",
        [],
        flag="--add-feature",
        metavar="NAME",
        vocabulary="feature",
    )
    modules: tuple[str, ...] = setting(
        "kernel modules to include and load at boot, by name or alias",
        [],
        flag="--add-module",
        metavar="NAME",
    )
    filesystems: tuple[str, ...] = setting(
        "filesystem types the initrd must mount (module, fsck and mount helper)",
        [],
        flag="--filesystem",
        metavar="TYPE",
        # Written into the image's /etc/fstab, where a space would split the line.
        check=matching(r"[A-Za-z0-9_.+-]+", "a filesystem type such as ext4"),
    )
    omit_modules: tuple[str, ...] = setting(
        "kernel modules never to include, by name or glob (even as a dependency)",
        [],
        flag="--omit-module",
        metavar="GLOB",
    )
    driver_classes: tuple[str, ...] = setting(
        "whole classes of drivers to include, e.g. nvme, usb-storage (see README)",
        [],
        flag="--add-driver-class",
        metavar="CLASS",
        vocabulary="driver class",
    )
    mode: ModuleMode = setting(
        "which modules to include",
        "hostonly",
        choice_flags={
            "hostonly": "modules this machine needs for its root",
            "generic": "every storage, filesystem and keyboard driver",
        },
    )
    microcode: bool = setting(
        "prepend early CPU microcode", True, off_help="no early microcode segment"
    )
    sysfs: Path = setting(
        "sysfs to detect the host's devices from (hostonly)", "/sys", metavar="DIR"
    )
    procfs: Path = setting(
        "procfs to detect the host's mounts and CPU from (hostonly)", "/proc", metavar="DIR"
    )
    devfs: Path = setting(
        "devfs to read the LUKS2 headers of the host's volumes from (hostonly)",
        "/dev",
        metavar="DIR",
    )
    files: tuple[str, ...] = setting(
        "extra files or directories to include",
        [],
        flag="--add-file",
        metavar="PATH",
        check=absolute_path,
    )
    keyfiles: tuple[str, ...] = setting(
        "LUKS key files to embed at their paths (the image is then written mode 0600)",
        [],
        flag="--add-keyfile",
        metavar="PATH",
        check=absolute_path,
    )
    network_files: tuple[str, ...] = setting(
        "systemd-networkd .network/.netdev/.link files for the initrd (feature network)",
        [],
        flag="--add-network-file",
        metavar="PATH",
        check=matching(
            r"/\S*\.(network|netdev|link)", "an absolute path of a .network, .netdev or .link file"
        ),
    )
    host_network_files: bool = setting(
        "also take the sysroot's own systemd-networkd files (/etc/systemd/network), "
        "leaving out any that hold a secret (feature network)",
        False,
        off_help="take only the network files named by network_files",
    )
    iscsi_config: str | None = setting(
        "iscsid.conf for the initrd, e.g. with CHAP credentials (feature iscsi; "
        "the image is then written mode 0600)",
        metavar="PATH",
        check=absolute_path,
    )
    exitrd: bool = setting(
        "also write the exitrd, the image shutdown pivots into",
        True,
        off_help="write the initrd only",
    )
    exitrd_in_initrd: bool = setting(
        "carry the exitrd inside the initrd, which copies it to /run/initramfs before the "
        "switch to the root: shutdown goes through it with nothing installed in the root "
        "(what `bookend boot-test` builds); costs the exitrd's size in RAM while the system runs",
        False,
        off_help="the root loads the exitrd at shutdown (bookend install-exitrd)",
    )
    force: bool = setting(
        "replace an existing initrd even with a new one that fails `bookend check`",
        False,
        off_help="keep an existing initrd when the new one fails its check",
        image_input=False,
    )
    uki: bool = setting(
        "write a unified kernel image (kernel, initrd, command line) made by the sysroot's ukify",
        False,
        off_help="write an initrd, not a UKI",
    )
    cmdline: str | None = setting(
        "kernel command line built into the UKI (--uki)", metavar="CMDLINE"
    )
    # Keys on the machine running bookend (not in the sysroot), relative to the current
    # directory; bookend.resolve makes them absolute and checks them (bookend.signing).
    secureboot_key: Path | None = setting(
        "PEM private key that signs the UKI for Secure Boot (with secureboot_cert)",
        metavar="FILE",
        flag="--secureboot-key",
    )
    secureboot_cert: Path | None = setting(
        "PEM X.509 certificate of secureboot_key, put into the UKI's signature",
        metavar="FILE",
        flag="--secureboot-cert",
    )
    pcr_private_key: Path | None = setting(
        "PEM private key that signs the UKI's expected TPM PCR 11 values (.pcrsig), "
        "with the sysroot's systemd-measure",
        metavar="FILE",
    )
    pcr_public_key: Path | None = setting(
        "its public key, put into the UKI (.pcrpkey); default: derived from pcr_private_key",
        metavar="FILE",
    )
    rebuild: bool = setting(
        "build even when the images beside the output were made from the same inputs",
        False,
        off_help="leave images built from the same inputs alone",
        image_input=False,
    )
    exitrd_output: Path = setting(
        "where to write the exitrd (default: beside the initrd, 'initrd' in its name "
        "replaced by 'exitrd')",
        metavar="FILE",
    )
    storage_daemons: tuple[str, ...] = setting(
        "units started in the initrd that serve the root until the exitrd stops them",
        [],
        flag="--add-storage-daemon",
        metavar="UNIT",
        # A unit name becomes a path in the image: no '/', no spaces.
        check=matching(
            r"[A-Za-z0-9:_.\\@-]+\.(service|socket|target)", "a unit name such as iscsid.service"
        ),
    )
    exitrd_files: tuple[str, ...] = setting(
        "extra files or directories of the sysroot to include in the exitrd",
        [],
        flag="--exitrd-add-file",
        metavar="PATH",
        check=absolute_path,
    )
    exitrd_features: tuple[str, ...] = setting(
        "features whose exitrd part (tools, files, shutdown hooks) goes into the exitrd, "
        "even if the initrd has not got them",
        [],
        flag="--exitrd-add-feature",
        metavar="NAME",
        vocabulary="feature",
    )
    exitrd_sysexts: tuple[str, ...] = setting(
        "system extensions (a directory, or a squashfs or erofs image) whose /usr and /opt "
        "are merged into the exitrd when it is built",
        [],
        flag="--exitrd-sysext",
        metavar="FILE",
        # A path on the building machine, relative to the current directory: kept whole,
        # since the manifest's reasons and the up-to-date record name it.
        parse_item=os.path.abspath,
    )
    exitrd_shutdown: Path | None = setting(
        "a standalone systemd-shutdown (one needing no libsystemd-shared, e.g. unpacked "
        "from Debian's systemd-standalone-shutdown) to be the exitrd's /shutdown; its "
        "libraries come from the sysroot (default: the sysroot's, standalone if it has one)",
        metavar="FILE",
    )
    credentials: tuple[tuple[str, str], ...] = setting(  # (name, file on this machine)
        "systemd credentials embedded in the initrd for its services' LoadCredential=/"
        "ImportCredential=, as NAME=FILE (a FILE ending in .cred is an encrypted one); "
        "the image is then written mode 0600 (feature credentials)",
        [],
        flag="--credential",
        metavar="NAME=FILE",
        check=credential_problem,
        parse_item=parse_credential,
        show_item=lambda item: f"{item[0]}={item[1]}",
    )
    sysexts: tuple[str, ...] = setting(
        "system extensions (a squashfs or erofs image, or a directory) systemd-sysext "
        "merges into the initrd's /usr and /opt at boot (feature extensions)",
        [],
        flag="--add-sysext",
        metavar="FILE",
        parse_item=os.path.abspath,
    )
    confexts: tuple[str, ...] = setting(
        "configuration extensions (an image or a directory) systemd-confext merges into "
        "the initrd's /etc at boot; systemd 254 and later (feature extensions)",
        [],
        flag="--add-confext",
        metavar="FILE",
        parse_item=os.path.abspath,
    )
    verity_certificates: tuple[str, ...] = setting(
        "PEM X.509 certificates the initrd's systemd trusts for signed Verity extension "
        "images (those systemd-stub brings from the ESP), installed as "
        "/etc/verity.d/NAME.crt (feature signed-extensions)",
        [],
        flag="--verity-certificate",
        metavar="FILE",
        parse_item=os.path.abspath,
    )
    units: tuple[tuple[str, str | None], ...] = setting(  # (unit, target or None: [Install])
        "sysroot units to add to the initrd with what they run and need, enabled per their "
        "[Install] section or for TARGET, as UNIT[:TARGET]",
        [],
        flag="--add-unit",
        metavar="UNIT[:TARGET]",
        check=matching(
            UNIT_ITEM,
            "UNIT[:TARGET] such as foo.service or foo.service:initrd.target",
        ),
        parse_item=parse_unit_item,
        show_item=lambda item: item[0] if item[1] is None else f"{item[0]}:{item[1]}",
    )
    activation: str | None = setting(
        "command in the real root run under /sysroot before switch-root (e.g. NixOS' activate)",
        metavar="COMMAND",
    )
    hooks: tuple[tuple[str, str], ...] = setting(  # (point, shell command), in the order given
        f"shell command run at a boot point, as POINT=COMMAND ({', '.join(HOOK_POINTS)})",
        [],
        flag="--hook",
        metavar="POINT=COMMAND",
        check=hook_problem,
        parse_item=parse_hook,
        unique=False,  # the same command at two moments is two hooks
        show_item=lambda hook: f"{hook[0]}={hook[1]}",
        complete=tuple(f"{point}=" for point in HOOK_POINTS),
    )
    root: str | None = setting(
        "root device to mount at /sysroot when the kernel command line names none",
        metavar="DEVICE",
        # Written into the image's /etc/fstab.
        check=matching(r"[^\s#]+", "a device such as UUID=... or /dev/vda2, without spaces"),
    )
    splash: bool = setting(
        "a boot splash (feature plymouth): plymouth, its theme and display drivers; it "
        "shows, and asks for passphrases, when the kernel command line says `splash`",
        False,
        off_help="no boot splash (unless features names plymouth)",
    )
    splash_theme: str | None = setting(
        "plymouth theme of the splash (default: the sysroot's plymouthd.conf, else "
        "plymouthd.defaults; a theme that is not there falls back to text)",
        metavar="NAME",
        check=matching(r"[A-Za-z0-9_.+-]+", "a theme name such as spinner"),
    )
    emergency_shell: str = setting(
        "emergency shell access: 'locked', 'unlocked' or a crypt(3) hash of root's password",
        "locked",
        metavar="ACCESS",
        check=emergency_shell_problem,
    )
    ssh_authorized_keys: tuple[str, ...] = setting(
        "SSH public keys that may log in to the initrd to answer passphrase prompts: "
        "an authorized_keys file (absolute path on the building machine) or a key itself "
        "(feature ssh; TOML: ssh.authorized_keys)",
        [],
        metavar="FILE",
        check=authorized_key_problem,
    )
    ssh_server: SshServer = setting(
        "the initrd's SSH server: dropbear, openssh, or auto (dropbear where the sysroot "
        "has it, else openssh) (feature ssh; TOML: ssh.server)",
        "auto",
        metavar="NAME",
    )
    ssh_host_keys: SshHostKeys = setting(
        "the initrd's SSH host keys: 'generate' (made once, kept in bookend's state "
        "directory) or 'host' (the sysroot's own; the image is then written mode 0600) "
        "(feature ssh; TOML: ssh.host_keys)",
        "generate",
        metavar="SOURCE",
    )
    keymap: str | None = setting(
        "console keymap the initrd loads before asking for a passphrase, e.g. de "
        "(feature vconsole; default: the sysroot's vconsole.conf or /etc/default/keyboard)",
        metavar="KEYMAP",
        # Written into the image's vconsole.conf and passed to loadkeys as one word.
        check=matching(r"[A-Za-z0-9_.+@/-]+", "a keymap name such as de or de-latin1"),
    )
    console_font: str | None = setting(
        "console font the initrd loads, e.g. eurlatgr (feature vconsole; default: the "
        "sysroot's vconsole.conf FONT=)",
        metavar="FONT",
        check=matching(r"[A-Za-z0-9_.+@/-]+", "a console font name such as eurlatgr"),
    )
    # key -> where its value came from: a file, "default" or "command line"; for a list,
    # every source that gave it items (or the one that emptied it), comma-separated.
    origins: Mapping[str, str] = field(default_factory=dict)
    # list key -> the source of each item, in the order of the list's field above
    item_origins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def origin_of(self, key: str, index: int) -> str:
        """Where item number index of a list setting came from."""
        sources = self.item_origins.get(key, ())
        return sources[index] if index < len(sources) else self.origins.get(key, "config")

    @property
    def emergency_access(self) -> EmergencyAccess:
        if self.emergency_shell in ("locked", "unlocked"):
            return EmergencyAccess(self.emergency_shell)
        return EmergencyAccess.PASSWORD

    @property
    def root_password_hash(self) -> str | None:
        """The crypt(3) hash root's password is set to, with emergency_shell = HASH."""
        return self.emergency_shell if self.emergency_access is EmergencyAccess.PASSWORD else None


def _declared() -> tuple[Setting, ...]:
    """The settings in field order, each completed with its key and its field's type."""
    hints = get_type_hints(Config)
    declared = []
    for config_field in fields(Config):
        if "setting" not in config_field.metadata:
            continue
        hint = hints[config_field.name]
        if isinstance(hint, types.UnionType):  # X | None: what a set value is
            hint = next(arg for arg in hint.__args__ if arg is not type(None))
        declared.append(_completed(config_field.metadata["setting"], config_field.name, hint))
    return tuple(declared)


def _completed(declared: Setting, key: str, hint: Any) -> Setting:
    """What TOML holds for a field of type hint: bool and int as they are, a tuple as a
    list of strings, anything else as a string converted to it (a Path, an enum's value)."""
    kind: type = hint if hint in (bool, int) else str
    choices: tuple[str, ...] = ()
    convert: Callable[[str], Any] = str
    if getattr(hint, "__origin__", None) is tuple:
        kind = list
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = tuple(member.value for member in hint)
        convert = hint
    elif hint is Path:
        convert = Path
    return dataclasses.replace(declared, key=key, kind=kind, choices=choices, convert=convert)


SETTINGS: tuple[Setting, ...] = _declared()
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


def make_config(
    values: Mapping[str, Any],
    origins: Mapping[str, str],
    item_origins: Mapping[str, tuple[str, ...]],
) -> Config:
    """The Config of values: one per setting, already of its field's type."""
    return Config(
        **{s.key: values[s.key] for s in SETTINGS},
        origins=dict(origins),
        item_origins=dict(item_origins),
    )
