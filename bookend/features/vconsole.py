"""The console's keyboard layout and font, so a passphrase is typed with one's own layout.

The image gets an /etc/vconsole.conf saying what to load (bookend.console works it out
from the settings and the sysroot), the keymap with every file it includes, the font
files, loadkeys and setfont. Where the sysroot has systemd-vconsole-setup, it loads them
(started at sysinit; its udev rule runs it again for each new console), and
`rd.vconsole.*` on the kernel command line work as systemd documents. Debian builds
systemd without it; there a small unit of bookend's own does the same before the
passphrase prompt, honouring the same `rd.vconsole.*` options.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.console import ConsoleSettings, console_files, console_settings, decompressors
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.hooks import UNIT_DIR, wants_link
from bookend.sysroot import Sysroot

SYSTEMD_SETUP = "/usr/lib/systemd/systemd-vconsole-setup"
OWN_UNIT = "bookend-vconsole-setup.service"
OWN_SCRIPT = "/usr/lib/bookend/vconsole-setup"

# What bookend's unit runs: systemd-vconsole-setup's work for the first console, with
# the command line's rd.vconsole.* (and vconsole.*) over the image's vconsole.conf.
SETUP_SCRIPT = """\
#!/bin/sh
# Written by bookend: load the console keymap and font as systemd-vconsole-setup does
# (the sysroot's systemd has none). Settings: /etc/vconsole.conf, then the command line.
set -f
KEYMAP= KEYMAP_TOGGLE= FONT= FONT_MAP= FONT_UNIMAP=
[ -r /etc/vconsole.conf ] && . /etc/vconsole.conf
read -r cmdline < /proc/cmdline
for prefix in vconsole rd.vconsole; do
    for word in $cmdline; do
        case $word in
            "$prefix".keymap=*) KEYMAP=${word#*=} ;;
            "$prefix".keymap_toggle=*) KEYMAP_TOGGLE=${word#*=} ;;
            "$prefix".font=*) FONT=${word#*=} ;;
            "$prefix".font_map=*) FONT_MAP=${word#*=} ;;
            "$prefix".font_unimap=*) FONT_UNIMAP=${word#*=} ;;
        esac
    done
done
tty=/dev/tty1
status=0
if [ -n "$FONT" ]; then
    setfont -C "$tty" "$FONT" ${FONT_MAP:+-m "$FONT_MAP"} ${FONT_UNIMAP:+-u "$FONT_UNIMAP"} ||
        status=1
fi
if [ -n "$KEYMAP" ]; then
    # Unicode keymaps: the kernel's consoles start in UTF-8 mode, as systemd keeps them.
    loadkeys -q -C "$tty" -u "$KEYMAP" $KEYMAP_TOGGLE || status=1
    echo "bookend-vconsole-setup: keymap $KEYMAP loaded" > /dev/kmsg
fi
exit $status
"""

OWN_UNIT_TEXT = f"""\
# Written by bookend: the console's keymap and font, before anyone is asked to type.
[Unit]
Description=bookend: console keymap and font
DefaultDependencies=no
ConditionPathExists=/dev/tty1
After=systemd-journald.socket
Before=sysinit.target systemd-ask-password-console.service emergency.service rescue.service
Before=cryptsetup-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {OWN_SCRIPT}
"""


def configured(config: Config) -> dict[str, str | None]:
    """The settings that override the sysroot's, by vconsole.conf key."""
    return {"KEYMAP": config.keymap, "FONT": config.console_font}


def settings_of(config: Config) -> ConsoleSettings:
    return console_settings(Sysroot(config.sysroot), configured(config))


def sysroot_needs_it(context: FeatureContext) -> bool:
    """Hostonly: the sysroot's console has a layout other than the kernel's, or a font."""
    return context.detection is not None and settings_of(context.config).needs_setup


def _console(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    settings = settings_of(config)
    items: list[Request | Generated] = []
    conf = ArchiveEntry(
        "/etc/vconsole.conf", EntryKind.FILE, 0o644, data=settings.vconsole_conf().encode()
    )
    items.append(Generated(conf, "feature vconsole: the console's keymap and font"))
    files = console_files(sysroot, settings)
    items += [Request(RequestKind.PATH, path, "feature vconsole: loaded at boot") for path in files]
    tools = ["loadkeys"] + (["setfont"] if settings.values.get("FONT") else [])
    items += [Request(RequestKind.EXECUTABLE, tool, "feature vconsole") for tool in tools]
    # kbd pipes compressed files through these, run by /bin/sh.
    reason = "feature vconsole: kbd decompresses the keymap and font with it"
    tools = decompressors(files)
    if tools:
        tools.append("/bin/sh")
    items += [Request(RequestKind.EXECUTABLE, tool, reason) for tool in tools]
    items += _setup_unit(sysroot)
    return items


def _setup_unit(sysroot: Sysroot) -> list[Request | Generated]:
    """systemd-vconsole-setup where the sysroot has it, else bookend's own unit."""
    if sysroot.exists(SYSTEMD_SETUP):
        reason = "feature vconsole: systemd loads the keymap and font"
        # The prompt's unit only orders itself after it: started at sysinit (its unit has
        # no [Install]), and again by the udev rule for each console that appears.
        return [
            Request(RequestKind.UNIT, "systemd-vconsole-setup.service", reason),
            Request(RequestKind.UDEV_RULES, "90-vconsole.rules", reason, optional=True),
            wants_link("sysinit.target", "wants", "systemd-vconsole-setup.service", reason),
        ]
    reason = "feature vconsole: the sysroot's systemd has no systemd-vconsole-setup"
    script = ArchiveEntry(OWN_SCRIPT, EntryKind.FILE, 0o755, data=SETUP_SCRIPT.encode())
    unit = ArchiveEntry(
        f"{UNIT_DIR}/{OWN_UNIT}", EntryKind.FILE, 0o644, data=OWN_UNIT_TEXT.encode()
    )
    return [
        Request(RequestKind.EXECUTABLE, "/bin/sh", reason),
        Generated(script, reason),
        Generated(unit, reason),
        wants_link("sysinit.target", "wants", OWN_UNIT, reason),
    ]


FEATURE = Feature(
    name="vconsole",
    help="the console's keymap and font (vconsole.conf, /etc/default/keyboard), loaded "
    "before the passphrase prompt",
    # No keyboard drivers of its own: the luks feature brings them for the prompt, and
    # an image with nothing to type needs no layout either.
    compute=_console,
    switch_on=SwitchOn(settings=("keymap", "console_font"), detected=sysroot_needs_it),
)
