"""Features as TOML files (bookend.features.datafiles): masking, use, and every error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bookend.archive.cpio import write_cpio
from bookend.cli import main, vocabularies
from bookend.closure import Closure, build_closure
from bookend.errors import ConfigError
from bookend.exitrd import make_exitrd_plan
from bookend.features import ALL
from bookend.features.base import ExitrdPart, Feature, Request, RequestKind, SwitchOn
from bookend.features.datafiles import FEATURE_DIRS, SHIPPED_DIR, load_features
from bookend.manifest import with_manifest
from bookend.plan import Plan, make_plan, storage_features
from bookend.resolve import configure
from bookend.storage import HostDetection, StorageKind
from harness.images import bookend
from tests.unit.unittree import SYSTEM, make_demo_tree, write

DEMO = """\
help = "the demo tool"
executables = ["/usr/bin/demo", "?/usr/bin/demo-extra"]
files = ["/etc/demo.conf"]
modules = ["?demo_mod"]
requires = ["dm"]

[switch_on]
settings = ["units"]

[exitrd]
executables = ["/usr/bin/demo"]
purpose = "take the demo device down"
"""


def put(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


def feature_dir(config_root: Path, index: int) -> Path:
    return config_root / FEATURE_DIRS[index]


def test_later_directories_mask_earlier_ones(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(feature_dir(root, 0), "a.toml", 'help = "a from usr/lib"\n')
    put(feature_dir(root, 0), "b.toml", 'help = "b from usr/lib"\n')
    put(feature_dir(root, 0), "c.toml", 'help = "c from usr/lib"\n')
    etc_a = put(feature_dir(root, 1), "a.toml", 'help = "a from etc"\n')
    put(feature_dir(root, 2), "b.toml", "")  # empty: masks b without declaring it
    (feature_dir(root, 2) / "c.toml").symlink_to("/dev/null")  # masks c too
    put(feature_dir(root, 1), "d.toml", 'help = "d from etc"\n')
    extra_d = put(tmp_path / "extra", "d.toml", 'help = "d from --feature-dir"\n')
    registry = load_features(root, [tmp_path / "extra"], ALL)
    assert set(registry) - set(ALL) == {"a", "d"}
    assert (registry["a"].help, registry["a"].origin) == ("a from etc", str(etc_a))
    assert (registry["d"].help, registry["d"].origin) == ("d from --feature-dir", str(extra_d))
    assert all(registry[name] is feature for name, feature in ALL.items())


def test_a_feature_file_is_a_feature_like_bookends_own(root_tree: Path, tmp_path: Path) -> None:
    demo = put(tmp_path / "features", "demo.toml", DEMO)
    (root_tree / "usr/bin/demo").write_text("")
    (root_tree / "etc/demo.conf").write_text("x\n")
    registry = load_features(tmp_path / "no-root", [tmp_path / "features"], ALL)
    assert registry["demo"] == Feature(
        name="demo",
        help="the demo tool",
        requires=("dm",),
        executables=("/usr/bin/demo", "?/usr/bin/demo-extra"),
        modules=("?demo_mod",),
        files=("/etc/demo.conf",),
        switch_on=registry["demo"].switch_on,
        exitrd=registry["demo"].exitrd,
        origin=str(demo),
    )
    assert registry["demo"].switch_on.settings == ("units",)
    # Named in `features` (the vocabulary knows it) it is planned, with what it requires.
    values = {"sysroot": str(root_tree), "mode": "generic", "features": ["demo"]}
    config = configure(None, values, vocabularies(registry))
    plan = make_plan(config, registry=registry)
    assert plan.features.index("dm") < plan.features.index("demo")
    reason = f"feature demo ({demo})"
    mine = [r for r in plan.requests if r.reason == reason]
    assert [(r.kind, r.name, r.optional) for r in mine] == [
        (RequestKind.EXECUTABLE, "/usr/bin/demo", False),
        (RequestKind.EXECUTABLE, "/usr/bin/demo-extra", True),
        (RequestKind.MODULE, "demo_mod", True),
        (RequestKind.PATH, "/etc/demo.conf", False),
    ]
    # `why` names the file.
    closure = build_closure(
        config, Plan((), tuple(r for r in mine if r.kind is not RequestKind.MODULE), ())
    )
    assert closure.format_why("/etc/demo.conf") == f"/etc/demo.conf <- {reason}"
    # The exitrd gets its part, with its purpose.
    exitrd = make_exitrd_plan(config, plan)
    assert any(
        r.name == "/usr/bin/demo" and r.reason == "exitrd: take the demo device down"
        for r in exitrd.requests
    )
    # Without `features`, its setting switches it on.
    values = {"sysroot": str(root_tree), "mode": "generic"}
    assert (
        "demo"
        not in make_plan(
            configure(None, values, vocabularies(registry)), registry=registry
        ).features
    )


def test_unknown_feature_name_without_its_file(root_tree: Path) -> None:
    values = {"sysroot": str(root_tree), "features": ["demo"]}
    with pytest.raises(ConfigError, match=r"features: unknown feature 'demo'"):
        configure(None, values, vocabularies())


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("demo.toml", "help = ", "not valid TOML"),
        (
            "demo.toml",
            'help = "x"\nexecutable = []\n',
            "executable: unknown key (did you mean 'executables'?)",
        ),
        (
            "demo.toml",
            "executables = []\n",
            "help: expected a string saying what the feature brings, not nothing",
        ),
        ("demo.toml", 'help = ""\n', "help: expected a string"),
        (
            "demo.toml",
            'help = "x"\nexecutables = "demo"\n',
            "executables: expected a list of names, not the string 'demo'",
        ),
        ("demo.toml", 'help = "x"\nunits = [1]\n', "units: expected a list of names"),
        ("demo.toml", 'help = "x"\nmodules = [""]\n', "modules: expected a list of names"),
        ("demo.toml", 'help = "x"\nfiles = ["etc/x"]\n', "files: 'etc/x' is not an absolute path"),
        (
            "demo.toml",
            'help = "x"\nudev_rules = ["60-x.rules", "?@lvm-activate"]\n',
            "udev_rules: unknown purpose '@lvm-activate' (did you mean '@lvm-activation'?)",
        ),
        (
            "demo.toml",
            'help = "x"\ndriver_classes = ["nvm"]\n',
            "driver_classes: unknown driver class 'nvm' (did you mean 'nvme'?)",
        ),
        (
            "demo.toml",
            'help = "x"\nrequires = ["lmv"]\n',
            "requires: unknown feature 'lmv' (did you mean 'lvm'?)",
        ),
        (
            "demo.toml",
            'help = "x"\nswitch_on = 1\n',
            "switch_on: expected a table, not the number 1",
        ),
        ("demo.toml", 'help = "x"\n[switch_on]\nwhen = 1\n', "switch_on.when: unknown key"),
        (
            "demo.toml",
            'help = "x"\n[switch_on]\nalways = "yes"\n',
            "switch_on.always: expected true or false",
        ),
        (
            "demo.toml",
            'help = "x"\n[switch_on]\nsettings = ["unit"]\n',
            "switch_on.settings: unknown setting 'unit' (did you mean 'units'?)",
        ),
        (
            "demo.toml",
            'help = "x"\n[switch_on]\nprogram = "lvm"\n',
            "switch_on.program: expected an absolute path",
        ),
        ("demo.toml", 'help = "x"\nexitrd = []\n', "exitrd: expected a table"),
        (
            "demo.toml",
            'help = "x"\n[exitrd]\nexecutable = []\n',
            "exitrd.executable: unknown key (did you mean 'executables'?)",
        ),
        ("demo.toml", 'help = "x"\n[exitrd]\npurpose = 1\n', "exitrd.purpose: expected a string"),
        (
            "demo.toml",
            'help = "x"\n[exitrd]\nexecutables = "x"\n',
            "exitrd.executables: expected a list of names",
        ),
        (
            "demo.toml",
            'help = "x"\nunits = ["demo"]\n',
            "units: 'demo' is not UNIT[:TARGET], such as foo.service:initrd.target",
        ),
        (
            "demo.toml",
            'help = "x"\nunits = ["demo.service:initrd"]\n',
            "units: 'demo.service:initrd' is not UNIT[:TARGET]",
        ),
        (
            "demo.toml",
            'help = "x"\nserves = "raid"\n',
            "serves: unknown storage kind 'raid'",
        ),
        (
            "demo.toml",
            'help = "x"\nserves = ["md"]\n',
            "serves: expected a storage kind (luks, lvm, dm, md, btrfs, multipath, nbd, iscsi, "
            "nfs, network), not a list",
        ),
        ("lvm.toml", 'help = "x"\n', "'lvm' is one of bookend's own features"),
        ("De mo.toml", 'help = "x"\n', "'De mo' is not a feature name"),
    ],
)
def test_bad_feature_file_is_one_line_naming_file_and_key(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = put(tmp_path / "features", name, text)
    with pytest.raises(ConfigError) as error:
        load_features(tmp_path / "no-root", [tmp_path / "features"], ALL)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_every_bad_file_is_reported_at_once(tmp_path: Path) -> None:
    first = put(tmp_path / "features", "one.toml", "units = 1\n")
    second = put(tmp_path / "features", "two.toml", 'help = "x"\nfiles = ["x"]\n')
    with pytest.raises(ConfigError) as error:
        load_features(tmp_path, [tmp_path / "features", tmp_path / "missing"], ALL)
    for path in (first, second, tmp_path / "missing"):
        assert str(path) in str(error.value)


def test_features_command_lists_origin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = put(feature_dir(tmp_path, 1), "demo.toml", 'help = "the demo tool"\n')
    assert main(["features", "--config-root", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert f"  demo         the demo tool [{demo}]\n" in listing
    assert "* systemd " in listing  # bookend's own, without an origin
    put(feature_dir(tmp_path, 2), "demo.toml", "help = 1\n")
    assert main(["features", "--config-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(
        f"bookend: {feature_dir(tmp_path, 2)}/demo.toml: help:"
    )


# --- bookend's own feature files -------------------------------------------------

# What bookend/features/btrfs.py and devmapper.py declared before they became files:
# the shipped files must declare exactly this, or images would change.
PYTHON_BTRFS = Feature(
    name="btrfs",
    help="btrfs: the btrfs tool and udev rules that wait for every member of a multi-device fs",
    executables=("btrfs", "?fsck.btrfs", "?btrfsck"),
    udev_rules=("64-btrfs.rules", "?64-btrfs-dm.rules"),
    modules=("btrfs",),
    switch_on=SwitchOn(program="/bin/btrfs"),
    serves=StorageKind.BTRFS,
    exitrd=ExitrdPart(executables=("btrfs", "?fsck.btrfs", "?btrfsck")),
)
PYTHON_DM = Feature(
    name="dm",
    help="device-mapper: dm_mod, dmsetup and its udev rules (/dev/mapper, udev sync)",
    executables=("dmsetup",),
    udev_rules=("@dm", "@dm-disk", "@dm-notify"),
    modules=("dm_mod",),
    serves=StorageKind.DM,
)


@pytest.mark.parametrize("python", [PYTHON_BTRFS, PYTHON_DM], ids=["btrfs", "dm"])
def test_shipped_feature_file_declares_what_the_python_did(python: Feature) -> None:
    shipped = ALL[python.name]
    origin = SHIPPED_DIR / f"{python.name}.toml"
    assert shipped == dataclasses.replace(python, origin=str(origin), shipped=True)
    assert origin.is_file()
    # Its reasons are a Python feature's: the image does not depend on where bookend is.
    assert shipped.requests() == python.requests()
    assert {r.reason for r in shipped.requests()} == {f"feature {python.name}"}


def test_shipped_features_keep_their_place_in_the_plan_order() -> None:
    # The order features are switched on in decides which reason a shared file keeps.
    assert list(ALL) == [
        *("systemd", "udev", "kmod", "filesystems", "emergency", "release", "usr", "repart"),
        *("dm", "luks", "verity"),
        *("tpm2", "fido2", "pkcs11", "plymouth", "lvm", "mdraid", "btrfs", "sysroot-share"),
        *("resume", "network"),
        *("nbd", "iscsi", "nfs", "ssh", "activation", "hooks", "storage-daemons", "units"),
        *("vconsole",),
        "pcrphase",
        *("credentials", "extensions", "signed-extensions", "debug"),
    ]


def test_generic_plan_of_the_shipped_features(root_tree: Path) -> None:
    (root_tree / "usr/bin/btrfs").write_text("")  # /bin -> usr/bin: switches btrfs on
    config = configure(None, {"sysroot": str(root_tree), "mode": "generic", "features": ["lvm"]},
                       vocabularies())  # fmt: skip
    plan = make_plan(config)
    assert plan.features.index("dm") < plan.features.index("lvm") < plan.features.index("btrfs")
    for feature in (PYTHON_BTRFS, PYTHON_DM):
        reason = f"feature {feature.name}"
        assert [r for r in plan.requests if r.reason == reason] == feature.requests()
    exitrd = make_exitrd_plan(config, plan)
    assert {r.name for r in exitrd.requests if "btrfs" in r.reason} == {
        "btrfs",
        "fsck.btrfs",
        "btrfsck",
    }


def test_hostonly_storage_kind_is_served_by_a_shipped_feature(root_tree: Path) -> None:
    config = configure(None, {"sysroot": str(root_tree), "mode": "generic"}, vocabularies())
    detection = HostDetection((), ("btrfs",), ("vda",), ((StorageKind.BTRFS, "/"),))
    assert storage_features(config, detection) == ["btrfs"]


def test_user_file_replaces_a_shipped_feature_in_its_place(tmp_path: Path) -> None:
    mine = put(feature_dir(tmp_path, 1), "btrfs.toml", 'help = "my btrfs"\nmodules = ["btrfs"]\n')
    registry = load_features(tmp_path, [], ALL)
    assert list(registry) == list(ALL)
    assert (registry["btrfs"].help, registry["btrfs"].origin) == ("my btrfs", str(mine))
    assert not registry["btrfs"].shipped
    assert registry["btrfs"].requests()[0].reason == f"feature btrfs ({mine})"


def test_empty_user_file_masks_a_shipped_feature(tmp_path: Path) -> None:
    put(feature_dir(tmp_path, 2), "btrfs.toml", "")
    registry = load_features(tmp_path, [], ALL)
    assert "btrfs" not in registry
    assert list(registry) == [name for name in ALL if name != "btrfs"]


def test_masking_a_shipped_feature_others_require_is_an_error(tmp_path: Path) -> None:
    masking = put(feature_dir(tmp_path, 1), "dm.toml", "")
    with pytest.raises(ConfigError) as error:
        load_features(tmp_path, [], ALL)
    required_by = "luks, verity, lvm, signed-extensions"
    assert str(error.value) == f"{masking}: masks feature 'dm', which {required_by} require"


def test_features_command_shows_shipped_origin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", "--config-root", "/nonexistent"]) == 0
    listing = capsys.readouterr().out
    assert f"[{SHIPPED_DIR / 'btrfs.toml'}]" in listing
    assert f"[{SHIPPED_DIR / 'dm.toml'}]" in listing


# --- units of a feature file, and why ----------------------------------------------

UNITS_FEATURE = """\
help = "the demo service"
units = ["demo.service", "?absent.service", "web.service:initrd.target"]
executables = ["/usr/bin/demo-token"]
"""
WEB = "[Service]\nExecStart=/usr/bin/demo-token\n[Install]\nWantedBy=multi-user.target\n"


def demo_feature_closure(root: Path, feature_dir: Path) -> tuple[Closure, Path]:
    """The closure of what feature demo asks for (and initrd.target) in a generic image."""
    demo = put(feature_dir, "demo.toml", UNITS_FEATURE)
    registry = load_features(root / "no-config", [feature_dir], ALL)
    values = {"sysroot": str(root), "mode": "generic", "features": ["demo"]}
    config = configure(None, values, vocabularies(registry))
    plan = make_plan(config, registry=registry)
    mine = Plan(
        ("demo",),
        (
            *(r for r in plan.requests if r.reason.startswith("feature demo ")),
            Request(RequestKind.UNIT, "initrd.target", "feature systemd"),
        ),
        tuple(g for g in plan.generated if g.reason.startswith("feature demo ")),
        registry=registry,
    )
    return build_closure(config, mine), demo


def test_feature_file_units_come_and_are_enabled_as_add_unit_brings_them(
    root_tree: Path, tmp_path: Path
) -> None:
    write(make_demo_tree(root_tree), f"{SYSTEM}/web.service", WEB)
    closure, demo = demo_feature_closure(root_tree, tmp_path / "features")
    unit = f"feature demo ({demo}): demo.service"
    for path in (
        f"/{SYSTEM}/demo.service",
        "/etc/systemd/system/demo.service.d/local.conf",
        f"/{SYSTEM}/demo-helper.service",
        "/usr/sbin/demo-helperd",
        "/etc/default/demo",
        "/etc/demo.conf",
        "/etc/systemd/system/initrd.target.wants/demo.service",  # its [Install]
        "/etc/systemd/system/initrd.target.wants/web.service",  # UNIT:TARGET
    ):
        assert path in closure.entries, path
    assert "/etc/systemd/system/multi-user.target.wants/web.service" not in closure.entries
    assert closure.entries["/etc/default/demo"].reason == unit
    assert closure.entries["/usr/bin/demo-token"].reason == f"feature demo ({demo})"
    # As for --add-unit, a unit not written for the initrd is warned about, by reason.
    assert any(
        w.startswith(f"feature demo ({demo}): web.service: has default dependencies")
        for w in closure.warnings
    ), closure.warnings
    assert not any("demo.service:" in w for w in closure.warnings)


def test_why_names_the_feature_file_and_the_unit(
    root_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(make_demo_tree(root_tree), f"{SYSTEM}/web.service", WEB)
    closure, demo = demo_feature_closure(root_tree, tmp_path / "features")
    expected = (
        "/usr/sbin/demo-helperd <- Exec of /usr/lib/systemd/system/demo-helper.service"
        f" <- feature demo ({demo}): demo.service"
    )
    # `bookend plan --why` prints the closure's chain ...
    assert closure.format_why("/usr/sbin/demo-helperd") == expected
    # ... and `bookend why` the same chain from the image's manifest.
    image = tmp_path / "initrd.cpio"
    with image.open("wb") as out:
        write_cpio(with_manifest(closure).archive_entries(), out, epoch=0)
    assert main(["why", str(image), "/usr/sbin/demo-helperd"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["why", str(image), "/etc/systemd/system/initrd.target.wants/web.service"]) == 0
    assert capsys.readouterr().out.endswith(f"<- feature demo ({demo}): web.service\n")


def test_missing_unit_of_a_feature_file_is_an_error_naming_file_and_key(
    root_tree: Path, tmp_path: Path
) -> None:
    make_demo_tree(root_tree)  # no web.service
    with pytest.raises(ConfigError) as error:
        demo_feature_closure(root_tree, tmp_path / "features")
    demo = tmp_path / "features/demo.toml"
    assert str(error.value).startswith(f"{demo}: units: no unit 'web.service' in the sysroot ")


def test_bad_feature_file_stops_the_build_before_anything_is_written(
    root_tree: Path, tmp_path: Path
) -> None:
    bad = put(tmp_path / "features", "demo.toml", 'help = "x"\nserves = "btfrs"\n')
    (tmp_path / "out").mkdir()
    result = bookend("build", "--sysroot", str(root_tree), "--generic",
                     "--config-root", str(tmp_path / "no-config"),
                     "--feature-dir", str(bad.parent), "-o", str(tmp_path / "out/i.img"),
                     check=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"bookend: {bad}: serves: unknown storage kind 'btfrs' (did you mean 'btrfs'?)\n"
    )
    assert list((tmp_path / "out").iterdir()) == []
