"""SSH in the initrd: log in over the network and answer the boot's passphrase prompts.

- The server is dropbear or OpenSSH's sshd, whichever the sysroot has (`ssh_server`;
  `auto` prefers dropbear: it adds 55-70% of what sshd adds, see README). It starts
  once systemd-networkd has (feature network), listens on port 22 of every address,
  and is stopped when the initrd isolates initrd-switch-root.target, its whole cgroup
  with it (the sessions and the agents they run), so nothing of it reaches the root.
- Only the configured keys log in, as root, and every login runs one command whatever
  the client asks (authorized_keys' command=, and sshd's ForceCommand): it waits for a
  passphrase request and runs systemd-tty-ask-password-agent on the login's terminal,
  for every request, until none has come for a while. No shell, no forwarding.
- Host keys: one ed25519 key generated once and kept in bookend's state directory
  (bookend.sshkeys), or the sysroot's own (`ssh_host_keys = "host"`). Either way the
  image holds a private key, so it is written mode 0600; the build prints each host
  key's fingerprint so the first connection can be checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config, SshHostKeys, SshServer
from bookend.errors import ConfigError
from bookend.features.base import Contribution, Feature, FeatureContext, Generated, SwitchOn
from bookend.sshkeys import (
    HostKey,
    PublicKey,
    dropbear_host_key,
    generated_host_key,
    parse_public_key,
    read_authorized_keys,
    read_openssh_private,
    state_directory,
)
from bookend.sysroot import Sysroot
from bookend.units import EXEC_SEARCH_PATH

UNIT = "bookend-sshd.service"
UNIT_DIR = "/etc/systemd/system"
UNLOCK = "/usr/lib/bookend/ssh-unlock"
AGENT = "/usr/bin/systemd-tty-ask-password-agent"
HOME = "/root"
AUTHORIZED_KEYS = f"{HOME}/.ssh/authorized_keys"
SSHD_CONFIG = "/etc/ssh/sshd_config"
SSHD_SYSUSERS = "/usr/lib/sysusers.d/bookend-sshd.conf"
DROPBEAR_KEY = "/etc/dropbear/dropbear_ed25519_host_key"
OPENSSH_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
# Seconds the login waits for a first request, and for another after the last answer.
IDLE_LIMIT = 60

# The one command a login runs. The agent is given every request pending; a volume
# asked for later (or again, after a wrong passphrase) is answered in the next round.
UNLOCK_SCRIPT = f"""\
#!/bin/sh
# Written by bookend: what every SSH login to the initrd runs. It answers the boot's
# passphrase requests on this terminal, and ends when none has come for {IDLE_LIMIT} s; the
# connection closes by itself when the boot goes on to the real root.
idle=0
echo "bookend initrd: answering the boot's passphrase requests"
while [ "$idle" -lt {IDLE_LIMIT} ]; do
    set -- /run/systemd/ask-password/ask.*
    if [ -e "$1" ]; then
        {AGENT} --query
        idle=0
        sleep 1  # the asker removes its request once answered
    else
        sleep 1
        idle=$((idle + 1))
    fi
done
echo "bookend initrd: no passphrase request for {IDLE_LIMIT} s"
"""

KEY_OPTIONS = f'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="{UNLOCK}"'

UNIT_TEXT = """\
[Unit]
Description=SSH server of the initrd, to answer passphrase prompts
Documentation=man:systemd-tty-ask-password-agent(1)
# Early, as networkd is: the passphrase prompts it serves hold up sysinit.target.
DefaultDependencies=no
Wants=network.target
After=network.target systemd-networkd.service
# Stopped, sessions and all, before the switch to the real root (and at shutdown).
Conflicts=initrd-switch-root.target shutdown.target
Before=initrd-switch-root.target shutdown.target

[Service]
{service}
KillMode=control-group
"""

DROPBEAR_SERVICE = (
    # -F foreground, -E log to stderr (the journal), -s keys only (no passwords),
    # -j -k no port forwarding, -m no motd; -r the host key; pid file in /run.
    "ExecStart={program} -F -E -s -j -k -m -p 22 -P /run/bookend-dropbear.pid -r {key}"
)
OPENSSH_SERVICE = """\
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
ExecStartPre=systemd-sysusers {sysusers}
ExecStart={program} -D -e -f {config}"""

# sshd's privilege separation user, which the image's passwd does not have.
SSHD_SYSUSERS_TEXT = 'u sshd - "sshd privilege separation" /run/sshd\n'

SSHD_CONFIG_TEXT = """\
# Written by bookend: the initrd's sshd, for answering passphrase prompts only.
Port 22
{host_keys}
AuthorizedKeysFile {authorized_keys}
AllowUsers root
PermitRootLogin forced-commands-only
ForceCommand {unlock}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PrintMotd no
PrintLastLog no
PidFile none
"""


# systemd gives up on the root device after 90 s (DefaultDeviceTimeoutSec=), although
# the LUKS mapping under it waits for its passphrase without limit: a server unlocked over
# SSH would fall into emergency mode before anyone logged in. An image with ssh waits for
# every device as long as it takes; the person can log in to see what is missing.
WAIT_DROPIN = "/etc/systemd/system.conf.d/bookend-ssh-wait.conf"
WAIT_DROPIN_TEXT = "[Manager]\nDefaultDeviceTimeoutSec=infinity\n"


def _file(
    path: str, data: bytes | str, reason: str, mode: int = 0o644, secret: bool = False
) -> Generated:
    raw = data.encode() if isinstance(data, str) else data
    return Generated(ArchiveEntry(path, EntryKind.FILE, mode, data=raw), reason, secret=secret)


def _directory(path: str, reason: str, mode: int = 0o755) -> Generated:
    return Generated(ArchiveEntry(path, EntryKind.DIRECTORY, mode), reason)


def find_program(sysroot: Sysroot, name: str) -> str | None:
    """name on the search path systemd uses, as the sysroot has it."""
    return next((f"{d}/{name}" for d in EXEC_SEARCH_PATH if sysroot.exists(f"{d}/{name}")), None)


def chosen_server(config: Config) -> tuple[SshServer, str]:
    """The server the image gets and its program; dropbear first when either will do."""
    sysroot = Sysroot(config.sysroot)
    wanted = config.ssh_server
    candidates = [SshServer.DROPBEAR, SshServer.OPENSSH] if wanted is SshServer.AUTO else [wanted]
    for server in candidates:
        program = find_program(sysroot, "dropbear" if server is SshServer.DROPBEAR else "sshd")
        if program is not None:
            return server, program
    names = " nor ".join("dropbear" if s is SshServer.DROPBEAR else "sshd" for s in candidates)
    origin = config.origins.get("ssh_server", "default")
    raise ConfigError(
        f"{origin}: ssh_server: the sysroot {config.sysroot} has neither {names}"
        if len(candidates) > 1
        else f"{origin}: ssh_server: the sysroot {config.sysroot} has no {names}"
    )


def authorized_keys(config: Config) -> list[PublicKey]:
    keys = [key for item in config.ssh_authorized_keys for key in read_authorized_keys(item)]
    if not keys:
        origin = config.origins.get("features", "config")
        raise ConfigError(
            f"{origin}: features: ssh needs ssh_authorized_keys (no key would log in)"
        )
    return list({key.blob: key for key in keys}.values())


def host_keys(config: Config, server: SshServer) -> list[tuple[str, HostKey]]:
    """(where from, key) of every host key the image serves."""
    sysroot = Sysroot(config.sysroot)
    if config.ssh_host_keys is SshHostKeys.GENERATE:
        directory = state_directory(os.environ) / "ssh"
        return [(str(directory), generated_host_key(directory))]
    found: list[tuple[str, HostKey]] = []
    for kind in OPENSSH_KEY_TYPES:
        path = f"/etc/ssh/ssh_host_{kind}_key"
        data = sysroot.read_bytes(path)
        if data is not None:
            found.append((path, read_openssh_private(data, sysroot.host_str(path))))
    if server is SshServer.DROPBEAR:  # dropbear's own format is converted from ed25519
        found = [(path, key) for path, key in found if key.seed_and_public is not None]
    if not found:
        origin = config.origins.get("ssh_host_keys", "config")
        wanted = "an ed25519 host key" if server is SshServer.DROPBEAR else "host keys"
        raise ConfigError(
            f"{origin}: ssh_host_keys: {sysroot.host_path('/etc/ssh')} holds no {wanted}"
        )
    return found


def _host_key_entries(server: SshServer, keys: list[tuple[str, HostKey]]) -> list[Generated]:
    """The private keys (secret: the image becomes 0600) and their public halves."""
    entries: list[Generated] = []
    for origin, key in keys:
        reason = f"feature ssh: host key from {origin}"
        if server is SshServer.DROPBEAR:
            path, data = DROPBEAR_KEY, dropbear_host_key(key, origin)
        else:
            path, data = f"/etc/ssh/ssh_host_{_short_kind(key.public.kind)}_key", key.private
        entries.append(_file(path, data, reason, 0o600, secret=True))
        entries.append(_file(f"{path}.pub", key.public.line + "\n", reason))
    return entries


def _short_kind(kind: str) -> str:
    """ssh_host_KIND_key's KIND for a key type."""
    return "ecdsa" if kind.startswith("ecdsa") else kind.removeprefix("ssh-")


def _service(server: SshServer, program: str) -> str:
    if server is SshServer.DROPBEAR:
        return DROPBEAR_SERVICE.format(program=program, key=DROPBEAR_KEY)
    return OPENSSH_SERVICE.format(program=program, sysusers=SSHD_SYSUSERS, config=SSHD_CONFIG)


def _openssh_files(keys: list[Generated]) -> list[Generated]:
    reason = "feature ssh: sshd for passphrase prompts only"
    private = [g.entry.path for g in keys if g.secret]
    config = SSHD_CONFIG_TEXT.format(
        host_keys="\n".join(f"HostKey {path}" for path in private),
        authorized_keys=AUTHORIZED_KEYS,
        unlock=UNLOCK,
    )
    return [
        _file(SSHD_CONFIG, config, reason),
        _file(SSHD_SYSUSERS, SSHD_SYSUSERS_TEXT, "feature ssh: sshd's privilege separation user"),
    ]


def _compute(context: FeatureContext) -> Contribution:
    config = context.config
    # The checks first: a host key is made (and kept) only for an image that can be built.
    lines = [f"{KEY_OPTIONS} {key.line}\n" for key in authorized_keys(config)]
    server, program = chosen_server(config)
    keys = _host_key_entries(server, host_keys(config, server))
    origin = config.origins.get("ssh_authorized_keys", "config")
    reason = f"feature ssh ({server.value})"
    items: list[Generated] = [
        _directory(f"{HOME}/.ssh", f"{reason}: root's keys", 0o700),
        _file(AUTHORIZED_KEYS, "".join(lines), f"ssh_authorized_keys ({origin})", 0o600),
        _file(UNLOCK, UNLOCK_SCRIPT, f"{reason}: what a login runs", 0o755),
        *keys,
        _file(WAIT_DROPIN, WAIT_DROPIN_TEXT, f"{reason}: the root waits for a remote passphrase"),
        *(_openssh_files(keys) if server is SshServer.OPENSSH else []),
        _file(
            f"{UNIT_DIR}/{UNIT}",
            UNIT_TEXT.format(service=_service(server, program)),
            f"{reason}: the server",
        ),
        Generated(
            ArchiveEntry(
                f"{UNIT_DIR}/initrd.target.wants/{UNIT}",
                EntryKind.SYMLINK,
                0o777,
                target=f"../{UNIT}",
            ),
            f"{reason}: started in every boot",
        ),
    ]
    return items


def fingerprints(entries: Iterable[ArchiveEntry]) -> list[str]:
    """'TYPE SHA256:...' of each host key an image's entries hold (its .pub files)."""
    found = []
    for entry in entries:
        if entry.data is None or not entry.path.endswith("_key.pub"):
            continue
        if not entry.path.startswith(("/etc/ssh/ssh_host_", "/etc/dropbear/")):
            continue
        key = parse_public_key(entry.data.decode().strip())
        if isinstance(key, PublicKey):
            found.append(f"{key.kind} {key.fingerprint}")
    return found


FEATURE = Feature(
    name="ssh",
    help="an SSH server (dropbear or sshd) in the initrd to answer passphrase prompts remotely",
    requires=("network",),
    executables=(AGENT, "/bin/sh", "sleep"),
    # Both servers refuse a login whose shell /etc/shells does not list, where it exists.
    files=("?/etc/shells",),
    compute=_compute,
    switch_on=SwitchOn(settings=("ssh_authorized_keys",)),
)
