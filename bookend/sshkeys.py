"""SSH keys as bookend handles them: public keys to authorize, host keys to serve.

- Public keys (authorized_keys lines, `TYPE BASE64 [COMMENT]`) are checked, not just
  copied: the key's own blob must name the type the line names, so a truncated paste
  or a wrong file is an error at configuration time, not a refused login at boot.
- Host keys are OpenSSH's ed25519 private keys (unencrypted, as `ssh-keygen -N ''`
  writes them). Dropbear reads only its own format, which for ed25519 is the key type
  and the 64 bytes of seed and public key: converted here, so no dropbear tool is
  needed on the building machine.
- Generated host keys are made once and kept in bookend's state directory, so every
  later build (a new kernel) serves the same key and the client's known_hosts stays
  good; a build with nothing changed is then also byte for byte the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bookend.errors import ConfigError
from bookend.proc import run

# Key types a current client offers and both servers accept (DSA is gone from both).
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
OPENSSH_MAGIC = b"openssh-key-v1\0"
GENERATED_NAME = "ssh_host_ed25519_key"
ED25519_PUBLIC = 32  # bytes of an ed25519 public key


@dataclass(frozen=True)
class PublicKey:
    kind: str  # the key type, e.g. ssh-ed25519
    blob: bytes  # the key as the wire format has it
    comment: str = ""

    @property
    def line(self) -> str:
        """The key as an authorized_keys line, without options."""
        text = f"{self.kind} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    @property
    def fingerprint(self) -> str:
        """SHA256:..., as `ssh-keygen -l` and ssh's first-connection question print it."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode()
        return "SHA256:" + digest.rstrip("=")


def looks_inline(item: str) -> bool:
    """An ssh_authorized_keys item that is a key itself, not a file naming keys."""
    return item.split(maxsplit=1)[0] in KEY_TYPES if item.strip() else False


def parse_public_key(line: str) -> PublicKey | str:
    """The key of one authorized_keys line, or what is wrong with it."""
    fields = line.split(maxsplit=2)
    if fields[0] not in KEY_TYPES:
        if any(word in KEY_TYPES for word in line.split()):
            return "options before the key are not taken (bookend sets the key's options)"
        return f"{fields[0][:40]!r} is not an SSH key type ({', '.join(KEY_TYPES[:3])}, ...)"
    if len(fields) < 2:
        return f"a {fields[0]} key without its base64 part"
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except binascii.Error:
        return f"the {fields[0]} key's base64 part is damaged"
    named = _first_string(blob)
    if named != fields[0].encode():
        return f"the base64 part is not a {fields[0]} key (truncated or pasted wrong?)"
    if len(blob) < 4 + len(named) + 4 + (ED25519_PUBLIC if fields[0] == "ssh-ed25519" else 1):
        return f"the {fields[0]} key is cut short (truncated?)"
    return PublicKey(fields[0], blob, fields[2].strip() if len(fields) > 2 else "")


def _first_string(blob: bytes) -> bytes | None:
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    return blob[4 : 4 + length] if 4 + length <= len(blob) else None


def parse_authorized_keys(text: str, where: str) -> list[PublicKey]:
    """The keys of an authorized_keys text; the first bad line raises, naming where."""
    keys: list[PublicKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key = parse_public_key(line.strip())
        if isinstance(key, str):
            raise ConfigError(f"{where} line {number}: {key}")
        keys.append(key)
    return keys


def read_authorized_keys(item: str) -> list[PublicKey]:
    """The keys one ssh_authorized_keys item gives: itself, or the file it names."""
    if looks_inline(item):
        key = parse_public_key(item.strip())
        if isinstance(key, str):
            raise ConfigError(f"inline key: {key}")
        return [key]
    try:
        text = Path(item).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{item}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{item}: not a text file of SSH public keys") from None
    except OSError as exc:
        raise ConfigError(f"{item}: cannot read: {exc.strerror}") from None
    keys = parse_authorized_keys(text, item)
    if not keys:
        raise ConfigError(f"{item}: holds no SSH public key")
    return keys


@dataclass(frozen=True)
class HostKey:
    """An OpenSSH private host key, and its public half."""

    private: bytes  # the file as OpenSSH writes it
    public: PublicKey
    seed_and_public: bytes | None = None  # ed25519: 64 bytes, what dropbear keeps


def read_openssh_private(data: bytes, where: str) -> HostKey:
    """An unencrypted OpenSSH private key file (the PEM-like armour around openssh-key-v1)."""
    lines = data.decode(errors="replace").strip().splitlines()
    if not lines or "BEGIN OPENSSH PRIVATE KEY" not in lines[0]:
        raise ConfigError(f"{where}: not an OpenSSH private key")
    try:
        raw = base64.b64decode("".join(lines[1:-1]))
    except binascii.Error:
        raise ConfigError(f"{where}: damaged OpenSSH private key") from None
    if not raw.startswith(OPENSSH_MAGIC):
        raise ConfigError(f"{where}: not an OpenSSH private key")
    reader = _Reader(raw[len(OPENSSH_MAGIC) :], where)
    cipher, _kdf, _options = reader.string(), reader.string(), reader.string()
    if cipher != b"none":
        raise ConfigError(f"{where}: the host key has a passphrase; a boot cannot type it")
    reader.uint32()  # number of keys: one
    public_blob = reader.string()
    kind = (_first_string(public_blob) or b"").decode()
    seed_and_public = None
    if kind == "ssh-ed25519":
        private = _Reader(reader.string(), where)
        private.uint32(), private.uint32(), private.string(), private.string()  # checks, type, pub
        seed_and_public = private.string()
    return HostKey(data, PublicKey(kind, public_blob), seed_and_public)


def dropbear_host_key(key: HostKey, where: str) -> bytes:
    """The key in dropbear's own format (ed25519 only)."""
    if key.seed_and_public is None or len(key.seed_and_public) != 64:
        raise ConfigError(
            f"{where}: dropbear takes an ed25519 host key here, not {key.public.kind}"
        )
    return _string(b"ssh-ed25519") + _string(key.seed_and_public)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


@dataclass
class _Reader:
    data: bytes
    where: str
    offset: int = 0

    def uint32(self) -> int:
        if self.offset + 4 > len(self.data):
            raise ConfigError(f"{self.where}: damaged OpenSSH private key")
        (value,) = struct.unpack(">I", self.data[self.offset : self.offset + 4])
        self.offset += 4
        return int(value)

    def string(self) -> bytes:
        length = self.uint32()
        if self.offset + length > len(self.data):
            raise ConfigError(f"{self.where}: damaged OpenSSH private key")
        value = self.data[self.offset : self.offset + length]
        self.offset += length
        return value


def state_directory(environ: Mapping[str, str]) -> Path:
    """Where bookend keeps what it made once and must keep (generated host keys):
    BOOKEND_STATE_DIR, $XDG_STATE_HOME/bookend, /var/lib/bookend for root."""
    if environ.get("BOOKEND_STATE_DIR"):
        return Path(environ["BOOKEND_STATE_DIR"])
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "bookend"
    if os.geteuid() == 0:
        return Path("/var/lib/bookend")
    return Path.home() / ".local" / "state" / "bookend"


def generated_host_key(directory: Path) -> HostKey:
    """The ed25519 host key kept in directory, made there by ssh-keygen the first time."""
    path = directory / GENERATED_NAME
    if not path.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = directory / f".{GENERATED_NAME}.{os.getpid()}"
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".pub").unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bookend initrd", "-f", partial])
        partial.with_name(partial.name + ".pub").unlink()
        os.replace(partial, path)  # only a complete key is ever found under its name
    return read_openssh_private(path.read_bytes(), str(path))
