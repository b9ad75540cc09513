"""Units added from the sysroot (units, --add-unit): closure, enabling, warnings, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.closure import Closure, build_closure
from bookend.config import Config
from bookend.config.show import effective_values
from bookend.errors import ConfigError
from bookend.features import units
from bookend.features.base import FeatureContext, Request, RequestKind, split_contribution
from bookend.plan import Plan
from tests.unit.conftest import load_config
from tests.unit.unittree import SYSTEM, make_demo_tree, write


@pytest.fixture
def demo_tree(root_tree: Path) -> Path:
    return make_demo_tree(root_tree)


def config_for(root: Path, *items: str) -> Config:
    return load_config(None, {"sysroot": str(root), "units": list(items), "mode": "generic"})


def units_closure(config: Config) -> Closure:
    """The closure of what the units feature asks for, its warnings included, in an
    image with initrd.target (the systemd feature's)."""
    assert units.FEATURE.compute is not None
    requests, generated = split_contribution(units.FEATURE.compute(FeatureContext(config)))
    requests.append(Request(RequestKind.UNIT, "initrd.target", "feature systemd"))
    return build_closure(config, Plan(("units",), tuple(requests), tuple(generated)))


def test_unit_comes_with_programs_dependencies_dropins_and_files(demo_tree: Path) -> None:
    entries = units_closure(config_for(demo_tree, "demo.service")).entries
    for path in (
        f"/{SYSTEM}/demo.service",
        "/etc/systemd/system/demo.service.d/local.conf",  # drop-in
        "/usr/bin/demo-token",  # ExecStart=, over a continuation line
        "/usr/bin/sh",  # its interpreter
        f"/{SYSTEM}/demo-helper.service",  # Requires=
        "/usr/sbin/demo-helperd",  # the dependency's program, a bare name on systemd's path
        "/etc/default/demo",  # EnvironmentFile=
        "/etc/demo.conf",  # ConditionPathExists=
        "/var/lib/demo",  # ConditionPathIsDirectory=, with its "|" trigger prefix
    ):
        assert path in entries, path
    assert "/var/lib/demo/big" not in entries  # the directory alone, not what it holds
    assert "/etc/demo-disabled" not in entries  # "!": bringing it would flip the condition
    assert "/etc/default/demo-optional" not in entries  # "-" and absent: no error


def test_unit_is_enabled_per_install_or_for_the_given_target(demo_tree: Path) -> None:
    installed = units_closure(config_for(demo_tree, "demo.service")).entries
    link = installed["/etc/systemd/system/initrd.target.wants/demo.service"].entry
    assert link.target == f"/{SYSTEM}/demo.service"
    given = units_closure(config_for(demo_tree, "demo.service:multi-user.target")).entries
    assert "/etc/systemd/system/multi-user.target.wants/demo.service" in given
    assert "/etc/systemd/system/initrd.target.wants/demo.service" not in given


def test_every_file_names_the_setting_and_unit(demo_tree: Path) -> None:
    closure = units_closure(config_for(demo_tree, "demo.service"))
    why = closure.format_why("/usr/sbin/demo-helperd")
    assert why == (
        "/usr/sbin/demo-helperd <- Exec of /usr/lib/systemd/system/demo-helper.service"
        " <- units (command line): demo.service"
    )
    for path in ("/etc/default/demo", "/var/lib/demo", f"/{SYSTEM}/demo.service"):
        assert closure.entries[path].reason == "units (command line): demo.service"


def test_unit_meant_for_the_initrd_gets_no_warning(demo_tree: Path) -> None:
    assert units_closure(config_for(demo_tree, "demo.service")).warnings == ()


def test_unit_of_the_running_system_is_warned_about(demo_tree: Path) -> None:
    write(
        demo_tree,
        f"{SYSTEM}/web.service",
        "[Unit]\nAfter=network-online.target sysroot.mount demo.service\n"
        "[Service]\nExecStart=/usr/bin/demo-token\n[Install]\nWantedBy=multi-user.target\n",
    )
    write(demo_tree, f"{SYSTEM}/plain.service", "[Service]\nExecStart=/usr/bin/demo-token\n")
    config = config_for(demo_tree, "web.service", "plain.service")
    warnings = units_closure(config).warnings
    web = [w for w in warnings if w.startswith("units (command line): web.service: ")]
    assert len(web) == 3, warnings
    assert "has default dependencies" in web[0]
    # sysroot.mount is made at boot by a generator; demo.service is not in this image.
    assert "ordered after network-online.target, demo.service, which the initrd lacks" in web[1]
    assert "enabled for multi-user.target, which the initrd lacks" in web[2]
    assert any(w.startswith("units (command line): plain.service: not enabled:") for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_unknown_unit_or_target_is_one_error_naming_option(demo_tree: Path) -> None:
    with pytest.raises(ConfigError) as error:
        config_for(demo_tree, "dmeo.service", "demo.service:initrd-nope.target")
    message = str(error.value)
    assert "\n" not in message
    assert (
        "command line: units: unit dmeo.service not found in the sysroot "
        "(did you mean 'demo.service'?)" in message
    )
    assert "command line: units: target initrd-nope.target not found in the sysroot" in message


@pytest.mark.parametrize("item", ["demo", "demo.service:initrd", "a/b.service", "x.service:"])
def test_bad_form_is_an_error(demo_tree: Path, item: str) -> None:
    with pytest.raises(ConfigError, match=r"command line: units: .* is not UNIT\[:TARGET\]"):
        config_for(demo_tree, item)


def test_toml_key_and_config_show(demo_tree: Path, tmp_path: Path) -> None:
    toml = tmp_path / "bookend.toml"
    toml.write_text('units = ["demo.service:initrd.target", "demo-helper.service"]\n')
    config = load_config(toml, {"sysroot": str(demo_tree)})
    assert config.units == (("demo.service", "initrd.target"), ("demo-helper.service", None))
    shown = effective_values(config)["units"]
    assert shown == ["demo.service:initrd.target", "demo-helper.service"]
    closure = units_closure(config)
    assert closure.entries[f"/{SYSTEM}/demo.service"].reason == f"units ({toml}): demo.service"


def test_missing_environment_file_is_an_error_naming_unit(demo_tree: Path) -> None:
    (demo_tree / "etc/default/demo").unlink()
    with pytest.raises(ConfigError, match=r"units \(command line\): demo.service: .*/etc/default"):
        units_closure(config_for(demo_tree, "demo.service"))


def test_template_is_enabled_as_its_instance(demo_tree: Path) -> None:
    template = "[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=/usr/bin/demo-token %i\n"
    write(demo_tree, f"{SYSTEM}/echo@.service", template + "[Install]\nWantedBy=initrd.target\n")
    write(demo_tree, f"{SYSTEM}/dflt@.service", template + "[Install]\nWantedBy=initrd.target\n"
          "DefaultInstance=tty1\n")  # fmt: skip
    closure = units_closure(
        config_for(demo_tree, "echo@one.service", "dflt@.service", "echo@.service")
    )
    links = {
        path: item.entry.target
        for path, item in closure.entries.items()
        if path.startswith("/etc/systemd/system/initrd.target.wants/")
    }
    assert links == {
        "/etc/systemd/system/initrd.target.wants/echo@one.service": f"/{SYSTEM}/echo@.service",
        "/etc/systemd/system/initrd.target.wants/dflt@tty1.service": f"/{SYSTEM}/dflt@.service",
    }
    assert closure.warnings == (
        "units (command line): echo@.service: not enabled: a template without an instance "
        "or DefaultInstance=; name an instance, e.g. echo@NAME.service",
    )


def test_instance_brings_its_templates_dropins_and_their_programs(demo_tree: Path) -> None:
    write(demo_tree, f"{SYSTEM}/echo@.service", "[Service]\nExecStart=/usr/bin/demo-token %i\n")
    write(
        demo_tree, f"{SYSTEM}/echo@.service.d/extra.conf", "[Service]\nExecStartPre=demo-helperd\n"
    )
    closure = units_closure(config_for(demo_tree, "echo@one.service:initrd.target"))
    assert f"/{SYSTEM}/echo@.service.d/extra.conf" in closure.entries
    assert "/usr/sbin/demo-helperd" in closure.entries  # the template drop-in's program
