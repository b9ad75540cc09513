"""Random configuration never gets past bookend as anything but a BookendError.

Documents are random tables: the real keys and junk ones, values of every TOML type
(nested tables and arrays too), biased towards values that pass some checks so the
later ones are reached as well. They go in through --config and a drop-in directory.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bookend.config import HOOK_POINTS, SETTINGS, Config, Setting
from bookend.errors import BookendError
from tests.unit.conftest import load_config, make_root_tree

KVER = "6.1.0-test"
SYSROOT = "@sysroot@"  # the fixture tree's path, put in when a document is written


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_root_tree(tmp_path_factory.mktemp("fuzz") / "sysroot", KVER)
    (root / f"usr/lib/modules/{KVER}/modules.dep").write_text("kernel/virtio_blk.ko:\n")
    return root


# Values that pass a check or nearly do, so random documents get past the first ones.
PLAUSIBLE = st.sampled_from([
    SYSROOT, "/", "/nonexistent", "", ".", "..", KVER, "6.1.0-tst", "zstd", "xz",
    "none", "hostonly", "generic", "locked", "unlocked", "$6$salt$hash", "hunter2",
    "/etc/os-release", "etc/os-release", "virtio_blk", "virtio-blk", "nvme", "luks",
    "ext4", "iscsid.service", "UUID=1234", "/dev/vda2 /", *(f"{p}=echo hi" for p in HOOK_POINTS),
    "pre-mout=x", "=", "../../etc", "/tmp/out.img", "/tmp", "/proc", "/sys", "a\nb", "\u00e9\u4e2d",
])  # fmt: skip
KEYS = st.one_of(
    st.sampled_from([s.key for s in SETTINGS]),
    st.sampled_from(["modulse", "compres", "build", "kernel", "", " ", "a.b", "Sysroot"]),
    st.text(max_size=12),
)
SCALARS = st.one_of(
    PLAUSIBLE,
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
ANY_DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=8)


# Values that pass every check against the fixture sysroot, for each key.
GOOD: dict[str, list[Any]] = {
    "kver": [KVER],
    "output": ["/tmp/bookend-fuzz-initrd.img"],
    "compress": ["zstd", "xz", "gzip", "lz4", "none"],
    "compress_level": [1, 6, 9],
    "features": [["luks"], ["lvm", "btrfs"], []],
    "modules": [["virtio_blk"], ["virtio-blk"], []],
    "filesystems": [["ext4"], ["xfs", "vfat"]],
    "omit_modules": [["nouveau*"], []],
    "driver_classes": [["nvme"], ["usb-storage", "ata"]],
    "mode": ["hostonly", "generic"],
    "microcode": [True, False],
    "sysfs": ["/sys"],
    "procfs": ["/proc"],
    "devfs": ["/dev"],
    "files": [["/etc/os-release"], ["/usr/lib"]],
    "keyfiles": [["/usr/lib/os-release"], []],
    "exitrd": [True, False],
    "force": [True, False],
    "exitrd_output": ["/tmp/bookend-fuzz-exitrd.img"],
    "hooks": [["pre-mount=echo hi", "mount=true"], []],
    "activation": ["/run/current-system/activate", "echo 'a\nb' $x %h"],
    "root": ["UUID=1234", "/dev/vda2"],
    "emergency_shell": ["locked", "unlocked", "$6$salt$hash"],
}
GOOD_DOCUMENTS = st.fixed_dictionaries(
    {"sysroot": st.just(SYSROOT)},
    optional={key: st.sampled_from(values) for key, values in GOOD.items()},
)


def same_type(setting: Setting) -> st.SearchStrategy[Any]:
    """Any value of the setting's own type: what the checks after the type check meet."""
    text = PLAUSIBLE | st.text(min_size=1, max_size=20)
    if setting.kind is list:
        return st.lists(text, max_size=3)
    if setting.kind is bool:
        return st.booleans()
    if setting.kind is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(-5, 25)
    return text


def with_one_changed(document: dict[str, Any], change: tuple[str, Any]) -> dict[str, Any]:
    key, value = change
    return {**document, key: value}


# A good document with one key set to a value of its type or to anything at all: every
# check, not only the first, meets wrong values.
ONE_WRONG = st.builds(
    with_one_changed,
    GOOD_DOCUMENTS,
    st.sampled_from(SETTINGS).flatmap(lambda s: st.tuples(st.just(s.key), same_type(s) | VALUES)),
)
DOCUMENTS = ANY_DOCUMENTS | GOOD_DOCUMENTS | ONE_WRONG
# The flags that take a value (not --generic or --no-microcode).
VALUE_FLAGS = [s.cli_flag for s in SETTINGS if s.kind is not bool and not s.choice_flags]


def toml_key(key: str) -> str:
    return toml_text(key)  # always quoted: any string is a key then


def toml_text(text: str) -> str:
    """A TOML basic string; everything but plain ASCII as \\u escapes."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in " /._-=$:+@"):
            out.append(char)
        elif ord(char) > 0xFFFF:
            out.append(f"\\U{ord(char):08X}")
        else:
            out.append(f"\\u{ord(char):04X}")
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    return toml_text(value)


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{toml_key(key)} = {toml_value(value)}\n" for key, value in document.items())


def write_inputs(
    directory: Path, sysroot: Path, document: dict[str, Any], drop_in: dict[str, Any]
) -> Path:
    """The document as a --config file, and drop_in as a drop-in under directory."""
    conf_d = directory / "etc/bookend/conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "50-fuzz.toml").write_text(toml_document(drop_in).replace(SYSROOT, str(sysroot)))
    config_file = directory / "bookend.toml"
    config_file.write_text(toml_document(document).replace(SYSROOT, str(sysroot)))
    return config_file


def load_or_reject(config_file: Path, config_root: Path) -> None:
    """load_config gives a Config or a BookendError, never another exception."""
    try:
        config = load_config(config_file, {}, config_root=config_root, cwd=lambda: config_root)
    except BookendError:
        event("rejected")  # --hypothesis-show-statistics shows how many get through
        return
    event("accepted")
    assert isinstance(config, Config)
    assert not list(config_root.glob("*.img"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=ANY_DOCUMENTS | GOOD_DOCUMENTS,
    drop_in=st.just({}) | ANY_DOCUMENTS | GOOD_DOCUMENTS,
    junk=st.just("") | st.text(max_size=40),
)
def test_any_toml_gives_a_config_or_a_bookend_error(
    sysroot: Path, document: dict[str, Any], drop_in: dict[str, Any], junk: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="bookend-fuzz-") as scratch:
        config_file = write_inputs(Path(scratch), sysroot, document, drop_in)
        if junk:  # not even TOML, often
            config_file.write_text(junk + config_file.read_text())
        load_or_reject(config_file, Path(scratch))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=ONE_WRONG)
def test_one_wrong_value_gives_a_config_or_a_bookend_error(
    sysroot: Path, document: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory(prefix="bookend-fuzz-") as scratch:
        load_or_reject(write_inputs(Path(scratch), sysroot, document, {}), Path(scratch))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    document=DOCUMENTS,
    flags=st.lists(
        st.tuples(
            st.sampled_from(
                [s.cli_flag for s in SETTINGS if s.kind is not bool and not s.choice_flags]
            ),
            PLAUSIBLE | st.text(min_size=1, max_size=20).filter(lambda t: "\0" not in t),
        ),
        max_size=3,
    ),
)
def test_cli_never_shows_a_traceback(
    sysroot: Path, document: dict[str, Any], flags: list[tuple[str, str]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="bookend-fuzz-") as scratch:
        directory = Path(scratch)
        config_file = write_inputs(directory, sysroot, document, {})
        argv = ["config", "show", "--config-root", scratch, "--config", str(config_file)]
        argv += [f"{flag}={value.replace(SYSROOT, str(sysroot))}" for flag, value in flags]
        result = subprocess.run(
            [sys.executable, "-m", "bookend", *argv],
            capture_output=True,
            text=True,
            check=False,
            cwd=scratch,
        )
        event(f"exit status {result.returncode}")
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode in (0, 2), result.stderr
        if result.returncode == 2:
            # The reason: bookend's, naming where the bad value was given, or argparse's
            # for a flag it refuses itself (after its usage lines).
            named = (f"bookend: {config_file}: ", "bookend: command line: ")
            refused_flag = "\nbookend config show: error: argument "
            assert result.stderr.startswith(named) or (
                result.stderr.startswith("usage: ") and refused_flag in result.stderr
            ), result.stderr
            assert result.stdout == "", result.stdout
