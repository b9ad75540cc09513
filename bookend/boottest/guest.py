"""What `bookend boot-test` gives the guest: the kernel command line and the root's script.

Nothing is installed in the root. systemd's run generator (systemd.run=) boots the root
into a unit that runs one shell command: it runs the script from a small extra disk
(the last one, by its serial), so no quoting of a script on the command line. The
script finds the root's own default target, starts it and waits for it, prints the
token with the result and the uptime, dumps systemd's journal lines of this boot (the
initrd's units as well: the initrd's journal moves into the root) between markers,
and returns, and the run generator's success action powers the machine off: through
the exitrd when the initrd left one in /run/initramfs (exitrd_in_initrd).
"""

from __future__ import annotations

from pathlib import Path

MARK = "BOOKEND-BOOT-TEST"
SCRIPT_BYTES = 4096  # the script disk's size: padded with newlines, never NUL bytes

SCRIPT = """\
exec >/dev/console 2>&1
t=
for d in /etc/systemd/system /run/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    t=$(readlink "$d/default.target") && break
done
t=${t##*/}
[ -n "$t" ] || t=graphical.target
echo "@MARK@ @TOKEN@ starting $t"
result=failed
systemctl start "$t" && systemctl is-active --quiet "$t" && result=reached
read -r up rest </proc/uptime
echo "@MARK@ @TOKEN@ $result $t $up"
systemctl --failed --no-legend --plain --no-pager | while read -r unit rest; do
    echo "@MARK@ @TOKEN@ failed-unit $unit"
done
echo "@MARK@ @TOKEN@ journal-begin"
journalctl -b -q --no-pager -o short-monotonic _PID=1 | sed 's/^/@MARK@-J /'
echo "@MARK@ @TOKEN@ journal-end"
read -r up rest </proc/uptime
echo "@MARK@ @TOKEN@ poweroff $up"
exit 0
"""


def script_text(token: str) -> str:
    return SCRIPT.replace("@MARK@", MARK).replace("@TOKEN@", token)


def write_script_disk(path: Path, token: str) -> None:
    """The raw disk the root runs: the script, then newlines up to SCRIPT_BYTES (the
    shell reads the device to its end; `exit` stops it before the padding)."""
    data = script_text(token).encode()
    if len(data) > SCRIPT_BYTES:
        raise ValueError("the boot-test script outgrew its disk")
    path.write_bytes(data + b"\n" * (SCRIPT_BYTES - len(data)))


def command_line(serial: str) -> str:
    """The words that make the root run the script disk whose serial is serial, and
    power off after it (whether it succeeded or not). printk.time=1: the kernel's
    console lines carry the seconds since boot, which time the kernel and shutdown.
    systemd.unit= too: the generator makes the unit the default target in /run, which a
    root's own /etc/systemd/system/default.target overrides (words appended after these,
    e.g. another systemd.unit=, win)."""
    device = f"/dev/disk/by-id/virtio-{serial}"
    run = f"/bin/sh -c 'udevadm settle -t 60; exec /bin/sh {device}'"
    return (
        f'printk.time=1 systemd.run="{run}" systemd.unit=kernel-command-line.service '
        "systemd.run_success_action=poweroff systemd.run_failure_action=poweroff"
    )
