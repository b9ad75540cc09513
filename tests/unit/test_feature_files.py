"""Features as TOML files (bookend.features.datafiles): masking, use, and every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.cli import main, vocabularies
from bookend.closure import build_closure
from bookend.errors import ConfigError
from bookend.exitrd import make_exitrd_plan
from bookend.features import ALL
from bookend.features.base import Feature, RequestKind
from bookend.features.datafiles import FEATURE_DIRS, load_features
from bookend.plan import Plan, make_plan
from bookend.resolve import configure

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
