"""The console's keymap and font (feature vconsole) on fixture trees: vconsole.conf and
Debian's /etc/default/keyboard read and converted, the files a keymap includes
followed, the setup unit chosen, and errors that name what is missing."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bookend import console
from bookend.errors import ConfigError, SysrootError
from bookend.features import vconsole
from bookend.features.base import Generated, RequestKind
from bookend.plan import make_plan, switched_on
from bookend.storage import HostDetection
from bookend.sysroot import Sysroot
from harness.images import CHECKOUT
from tests.unit.conftest import load_config

KEYMAPS = "usr/share/keymaps"
# Lines of systemd's kbd-model-map, in its order: the first best line wins.
MODEL_MAP = """\
# Originally from the Fedora/Red Hat system-config-keyboard package.
mk-utf\t\tmk,us\tpc105\t\t-\t\tterminate:ctrl_alt_bksp,grp:shifts_toggle,grp_led:scroll
de\t\t\tde\tpc105\t\t-\t\tterminate:ctrl_alt_bksp
us\t\t\tus\tpc105+inet\t-\t\tterminate:ctrl_alt_bksp
de-latin1\t\tde\tpc105\t\t-\t\tterminate:ctrl_alt_bksp
fr\t\t\tfr\tpc105\t\t-\t\tterminate:ctrl_alt_bksp
de-latin1-nodeadkeys\tde\tpc105\t\tnodeadkeys\tterminate:ctrl_alt_bksp
"""
NO_DETECTION = HostDetection(modules=(), filesystems=(), block_devices=(), storage=())


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))


def write(root: Path, path: str, text: str) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.fixture
def kbd_tree(root_tree: Path) -> Path:
    """Debian's console-data layout: keymaps by family, includes in ../include, and
    one include (linux-keys-bare) found beside the file that includes it."""
    keymaps = root_tree / KEYMAPS
    write_gz(keymaps / "i386/qwertz/de.kmap.gz",
             'keymaps 0-2\ninclude "qwertz-layout"\ninclude "linux-with-alt-and-altgr"\n'
             'include "euro.inc"\n')  # fmt: skip
    write_gz(keymaps / "i386/qwertz/de-latin1.kmap.gz", 'include "qwertz-layout"\n')
    write_gz(keymaps / "i386/qwerty/fr.kmap.gz", "keycode 16 = a\n")
    write_gz(keymaps / "i386/include/qwertz-layout.inc.gz", "keycode 21 = +z\n")
    write_gz(keymaps / "i386/include/linux-with-alt-and-altgr.inc.gz",
             'include "linux-keys-bare"\n')  # fmt: skip
    write_gz(keymaps / "i386/include/linux-keys-bare.inc.gz", "keycode 1 = Escape\n")
    write_gz(keymaps / "i386/include/euro.inc.gz", "altgr keycode 18 = euro\n")
    # Never included by the keymaps above: must stay out.
    write_gz(keymaps / "include/compose.latin1.inc.gz", "compose '`' 'A' to 'À'\n")
    write_gz(root_tree / "usr/share/consolefonts/eurlatgr.psfu.gz", "font")
    write(root_tree, "usr/share/systemd/kbd-model-map", MODEL_MAP)
    for tool in ("loadkeys", "setfont", "gzip"):
        program = write(root_tree, f"usr/bin/{tool}", "#!/bin/sh\n")
        program.chmod(0o755)
    return root_tree


def settings(root: Path, **configured: str | None) -> console.ConsoleSettings:
    return console.console_settings(Sysroot(root), configured)


def test_vconsole_conf_gives_keymap_and_font_and_the_files_loading_them_reads(
    kbd_tree: Path,
) -> None:
    write(kbd_tree, "etc/vconsole.conf", '# mine\nKEYMAP="de"\nFONT=eurlatgr\n')
    found = settings(kbd_tree)
    assert dict(found.values) == {"KEYMAP": "de", "FONT": "eurlatgr"}
    assert found.sources["KEYMAP"] == "/etc/vconsole.conf"
    files = console.console_files(Sysroot(kbd_tree), found)
    include = f"/{KEYMAPS}/i386/include"
    # Each include followed, the nested one too; nothing else from the tree.
    assert files == [
        f"/{KEYMAPS}/i386/qwertz/de.kmap.gz",
        f"{include}/qwertz-layout.inc.gz",
        f"{include}/linux-with-alt-and-altgr.inc.gz",
        f"{include}/euro.inc.gz",
        f"{include}/linux-keys-bare.inc.gz",
        "/usr/share/consolefonts/eurlatgr.psfu.gz",
    ]
    assert console.decompressors(files) == ["gzip"]
    assert "KEYMAP=de\n" in found.vconsole_conf()
    assert "FONT=eurlatgr\n" in found.vconsole_conf()


@pytest.mark.parametrize(
    ("keyboard", "keymap"),
    [
        # A plain layout: the first line with layout, model and no variant.
        ('XKBMODEL="pc105"\nXKBLAYOUT="de"\nXKBVARIANT=""\nXKBOPTIONS=""\n', "de"),
        # The variant picks its line.
        ('XKBMODEL="pc105"\nXKBLAYOUT="de"\nXKBVARIANT="nodeadkeys"\n', "de-latin1-nodeadkeys"),
        # Two layouts: the table's line for both, else for the first.
        ('XKBLAYOUT="mk,us"\n', "mk-utf"),
        ('XKBLAYOUT="fr,us"\n', "fr"),
        # Nothing to convert: no layout.
        ('XKBMODEL="pc105"\n', None),
    ],
)
def test_debian_keyboard_converted_with_kbd_model_map(
    kbd_tree: Path, keyboard: str, keymap: str | None
) -> None:
    write(kbd_tree, "etc/default/keyboard", f"# KEYBOARD CONFIGURATION FILE\n{keyboard}")
    found = settings(kbd_tree)
    assert found.values.get("KEYMAP") == keymap
    if keymap:
        assert found.sources["KEYMAP"] == "/etc/default/keyboard (converted)"
        assert found.values["XKB_LAYOUT"] in keyboard


def test_console_setup_cached_keymap_is_taken_unless_stale(kbd_tree: Path) -> None:
    keyboard = write(kbd_tree, "etc/default/keyboard", 'XKBLAYOUT="de"\n')
    cached = kbd_tree / "etc/console-setup/cached_UTF-8_del.kmap.gz"
    write_gz(cached, "keymaps 0-127\nkeycode 21 = +z\n")
    os.utime(keyboard, (1000, 1000))
    os.utime(cached, (2000, 2000))
    found = settings(kbd_tree)
    assert found.values["KEYMAP"] == "/etc/console-setup/cached_UTF-8_del.kmap.gz"
    assert console.console_files(Sysroot(kbd_tree), found) == [found.values["KEYMAP"]]
    # /etc/default/keyboard changed after setupcon ran: the table's conversion instead.
    os.utime(keyboard, (3000, 3000))
    assert settings(kbd_tree).values["KEYMAP"] == "de"
    # A US layout needs nothing loaded, cached keymap or not: hostonly leaves it out.
    write(kbd_tree, "etc/default/keyboard", 'XKBLAYOUT="us"\nXKBOPTIONS="ctrl:nocaps"\n')
    os.utime(kbd_tree / "etc/default/keyboard", (1000, 1000))
    assert settings(kbd_tree).values["KEYMAP"] == "us"
    assert not settings(kbd_tree).needs_setup


def test_keymap_converted_from_xkb_as_fedora_ships_them(kbd_tree: Path) -> None:
    write_gz(kbd_tree / KEYMAPS / "xkb/de-nodeadkeys.map.gz", "keycode 21 = +z\n")
    write(kbd_tree, "etc/vconsole.conf", "XKB_LAYOUT=de\nXKB_VARIANT=nodeadkeys\n")
    found = settings(kbd_tree)
    assert found.values["KEYMAP"] == "de-nodeadkeys"
    assert console.find_keymap(Sysroot(kbd_tree), "de-nodeadkeys") == (
        f"/{KEYMAPS}/xkb/de-nodeadkeys.map.gz"
    )


def test_setting_overrides_the_sysroot_and_us_needs_nothing(kbd_tree: Path) -> None:
    write(kbd_tree, "etc/vconsole.conf", "KEYMAP=de\n")
    assert settings(kbd_tree, KEYMAP="fr").values["KEYMAP"] == "fr"
    assert settings(kbd_tree, KEYMAP="fr").sources["KEYMAP"] == "setting keymap"
    assert settings(kbd_tree).needs_setup
    assert not settings(kbd_tree, KEYMAP="us").needs_setup


def test_unknown_keymap_or_missing_include_is_named(kbd_tree: Path) -> None:
    sysroot = Sysroot(kbd_tree)
    with pytest.raises(ConfigError, match=r"^setting keymap: keymap 'xx' not found"):
        console.console_files(sysroot, settings(kbd_tree, KEYMAP="xx"))
    write(kbd_tree, "etc/vconsole.conf", "KEYMAP=nowhere\n")
    with pytest.raises(SysrootError, match=r"^/etc/vconsole.conf: keymap 'nowhere' not found"):
        console.console_files(sysroot, settings(kbd_tree))
    write_gz(kbd_tree / KEYMAPS / "i386/qwerty/broken.kmap.gz", 'include "gone"\n')
    with pytest.raises(SysrootError, match=r"broken.kmap.gz: included keymap file 'gone'"):
        console.console_files(sysroot, settings(kbd_tree, KEYMAP="broken"))


def test_switched_on_by_the_sysroot_only_in_hostonly_mode_and_by_the_setting(
    kbd_tree: Path,
) -> None:
    write(kbd_tree, "etc/vconsole.conf", "KEYMAP=de\n")
    config = load_config(None, {"sysroot": str(kbd_tree)})
    assert "vconsole" in switched_on(config, NO_DETECTION)
    assert "vconsole" not in switched_on(config, None)  # generic: only when configured
    configured = load_config(None, {"sysroot": str(kbd_tree), "keymap": "fr"})
    assert "vconsole" in switched_on(configured, None)
    write(kbd_tree, "etc/vconsole.conf", "KEYMAP=us\n")
    assert "vconsole" not in switched_on(config, NO_DETECTION)


def plan_items(root: Path) -> tuple[dict[str, str], dict[str, Generated]]:
    """The feature's requests (name -> kind) and generated entries (path -> entry)."""
    config = load_config(None, {"sysroot": str(root), "keymap": "de", "mode": "generic"})
    plan = make_plan(config)
    requests = {r.name: r.kind.value for r in plan.requests if "vconsole" in r.reason}
    generated = {g.entry.path: g for g in plan.generated if "vconsole" in g.reason}
    return requests, generated


def test_own_unit_where_systemd_has_no_vconsole_setup(kbd_tree: Path) -> None:
    requests, generated = plan_items(kbd_tree)
    assert requests["loadkeys"] == requests["gzip"] == RequestKind.EXECUTABLE.value
    assert f"/{KEYMAPS}/i386/include/euro.inc.gz" in requests
    assert "setfont" not in requests  # no font configured
    unit = f"/etc/systemd/system/{vconsole.OWN_UNIT}"
    assert f"/etc/systemd/system/sysinit.target.wants/{vconsole.OWN_UNIT}" in generated
    text = (generated[unit].entry.data or b"").decode()
    assert "Before=sysinit.target systemd-ask-password-console.service" in text
    assert (generated["/etc/vconsole.conf"].entry.data or b"").endswith(b"KEYMAP=de\n")


def test_systemd_vconsole_setup_where_the_sysroot_has_it(kbd_tree: Path) -> None:
    write(kbd_tree, "usr/lib/systemd/systemd-vconsole-setup", "").chmod(0o755)
    requests, generated = plan_items(kbd_tree)
    assert requests["systemd-vconsole-setup.service"] == RequestKind.UNIT.value
    assert requests["90-vconsole.rules"] == RequestKind.UDEV_RULES.value
    assert not any(vconsole.OWN_UNIT in path for path in generated)
    assert "/etc/systemd/system/sysinit.target.wants/systemd-vconsole-setup.service" in generated


def run_setup_script(tmp_path: Path, conf: str, cmdline: str) -> str:
    """The image's setup script, run with its files and loadkeys replaced: the words
    loadkeys was given."""
    tmp_path.mkdir()
    (tmp_path / "vconsole.conf").write_text(conf)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    (tmp_path / "kmsg").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("loadkeys", "setfont"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho {tool} "$@" >> {tmp_path}/called\n')
        stub.chmod(0o755)
    script = vconsole.SETUP_SCRIPT
    for path in ("/etc/vconsole.conf", "/proc/cmdline", "/dev/kmsg"):
        script = script.replace(path, str(tmp_path / Path(path).name))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", script], check=True, env=env, cwd=tmp_path)
    return (tmp_path / "called").read_text()


def test_setup_script_takes_rd_vconsole_over_vconsole_conf(tmp_path: Path) -> None:
    called = run_setup_script(tmp_path / "a", "KEYMAP=de\n", "root=/dev/vda rw")
    assert called == "loadkeys -q -C /dev/tty1 -u de\n"
    called = run_setup_script(
        tmp_path / "b",
        "KEYMAP=de\nFONT=eurlatgr\n",
        "quiet vconsole.keymap=us rd.vconsole.keymap=fr rd.vconsole.font=lat0-16",
    )
    assert called == "setfont -C /dev/tty1 lat0-16\nloadkeys -q -C /dev/tty1 -u fr\n"


def test_unknown_keymap_through_the_cli_is_one_line_exit_2(kbd_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "initrd.img"
    output.parent.mkdir()
    argv = [sys.executable, "-m", "bookend", "build", "--sysroot", str(kbd_tree),
            "--generic", "--keymap", "xx", "-o", str(output)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "BOOKEND_CACHE_DIR": ""}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"bookend: setting keymap: keymap 'xx' not found (/{KEYMAPS})"], lines
    assert list(output.parent.iterdir()) == []
