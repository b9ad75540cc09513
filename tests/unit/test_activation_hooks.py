"""The activation and hook units: their content, their wiring, and what the closure takes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bookend.archive import ArchiveEntry, EntryKind
from bookend.closure import build_closure
from bookend.config import HOOK_POINTS, Config
from bookend.features import ALL, activation, hooks
from bookend.features.base import Feature, FeatureContext, Generated, RequestKind
from bookend.plan import Plan, make_plan
from tests.unit.conftest import load_config

UNITS = "/etc/systemd/system"
ACTIVATION = f"{UNITS}/bookend-activation.service"


def config_for(sysroot: Path, config_file: Path | None = None, **values: object) -> Config:
    return load_config(config_file, {"sysroot": str(sysroot), **values})


def generated(plan: Plan) -> dict[str, Generated]:
    return {g.entry.path: g for g in plan.generated}


def unit_text(plan: Plan, path: str) -> str:
    data = generated(plan)[path].entry.data
    assert data is not None, f"{path} has no content"
    return data.decode()


def settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit, values in order (several ExecStart= lines stay apart)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def words(unit: dict[str, list[str]], key: str) -> set[str]:
    """Unit names of a dependency key, over all its lines."""
    return {word for value in unit.get(key, []) for word in value.split()}


def assert_link(plan: Plan, path: str, unit: str) -> None:
    entry = generated(plan)[path].entry
    assert entry.kind is EntryKind.SYMLINK
    assert entry.target == f"../{unit}"


# --- activation -------------------------------------------------------------


def test_nothing_configured_adds_neither_feature(root_tree: Path) -> None:
    plan = make_plan(config_for(root_tree))
    assert "activation" not in plan.features
    assert "hooks" not in plan.features
    assert not [path for path in generated(plan) if "bookend-activation" in path or "hook" in path]


def test_activation_runs_in_the_real_root_after_its_mounts(root_tree: Path) -> None:
    plan = make_plan(config_for(root_tree, activation="/nix/var/activate --boot"))
    assert "activation" in plan.features
    unit = settings(unit_text(plan, ACTIVATION))
    assert unit["RootDirectory"] == ["/sysroot"]
    # The real root's shell runs the command, so a command line works as written.
    assert unit["ExecStart"] == ['/bin/sh -c "/nix/var/activate --boot"']
    assert {"initrd-root-fs.target", "initrd-fs.target"} <= words(unit, "After")
    assert {"initrd.target", "initrd-cleanup.service"} <= words(unit, "Before")
    # The initrd's API filesystems and its /run (which outlives switch-root) are seen.
    assert unit["MountAPIVFS"] == ["yes"]
    assert unit["BindPaths"] == ["/run"]
    assert unit["OnFailure"] == ["emergency.target"]
    assert unit["OnFailureJobMode"] == ["replace-irreversibly"]
    assert unit["StandardOutput"] == ["journal+console"]
    # Runs once: a oneshot that stays active, and only in an initrd.
    assert unit["Type"] == ["oneshot"]
    assert unit["RemainAfterExit"] == ["yes"]
    assert unit["ConditionPathExists"] == ["/etc/initrd-release"]


def test_activation_is_required_and_holds_back_switch_root(root_tree: Path) -> None:
    plan = make_plan(config_for(root_tree, activation="/bin/true"))
    assert_link(plan, f"{UNITS}/initrd.target.requires/bookend-activation.service", activation.UNIT)
    dropin = settings(unit_text(plan, f"{UNITS}/initrd-cleanup.service.d/bookend-activation.conf"))
    # Requisite=, not Requires=: a failed activation fails the switch, never re-runs.
    assert dropin == {"Requisite": [activation.UNIT], "After": [activation.UNIT]}


def test_activation_program_is_not_taken_from_the_sysroot(root_tree: Path) -> None:
    # The activation names a program of the real root, which the build sysroot may
    # also have (it often is the real root): it must stay out of the image.
    (root_tree / "usr/bin/dash").write_text("not really a shell\n")
    (root_tree / "usr/bin/sh").symlink_to("dash")
    (root_tree / "opt").mkdir()
    (root_tree / "opt/activate").write_text("#!/bin/sh\n")
    (root_tree / "opt/activate").chmod(0o755)
    config = config_for(root_tree, activation="/opt/activate && /opt/absent")
    entries = closure_entries(config, activation.FEATURE)
    assert "/opt/activate" not in entries
    assert "/usr/bin/dash" in entries  # only the shell is followed
    # The same program as a unit's own ExecStart is followed: the check can fail.
    direct = Generated(activation_entry("ExecStart=/opt/activate\n"), "test")
    assert "/opt/activate" in build_closure(config, Plan((), (), (direct,))).entries


def activation_entry(text: str) -> ArchiveEntry:
    return ArchiveEntry(ACTIVATION, EntryKind.FILE, 0o644, data=f"[Service]\n{text}".encode())


def closure_entries(config: Config, feature: Feature) -> set[str]:
    """The closure of what the feature alone asks for."""
    assert feature.compute is not None
    contribution = feature.compute(FeatureContext(config))
    items = tuple(item for item in contribution if isinstance(item, Generated))
    return set(build_closure(config, Plan((), tuple(feature.requests()), items)).entries)


# --- hooks ------------------------------------------------------------------

# (point, after, before) for a lone hook at each point.
PLACES = [
    ("cmdline", {"systemd-journald.socket"}, {"systemd-udevd.service"}),
    ("pre-udev", {"systemd-journald.socket"}, {"systemd-udevd.service"}),
    ("pre-trigger", {"systemd-udevd.service"}, {"systemd-udev-trigger.service"}),
    (
        "pre-mount",
        {"initrd-root-device.target"},
        {"systemd-fsck-root.service", "sysroot.mount"},
    ),
    ("mount", {"sysroot.mount"}, {"initrd-root-fs.target"}),
    ("pre-pivot", {"initrd-fs.target", activation.UNIT}, {"initrd-cleanup.service"}),
]


def test_every_hook_point_has_a_place_in_the_boot() -> None:
    assert tuple(hooks.POINT_ORDER) == HOOK_POINTS
    assert [point for point, _, _ in PLACES] == list(HOOK_POINTS)


@pytest.mark.parametrize(("point", "after", "before"), PLACES)
def test_hook_unit_sits_at_its_point(
    root_tree: Path, point: str, after: set[str], before: set[str]
) -> None:
    plan = make_plan(config_for(root_tree, hooks=[f"{point}=touch /run/x"]))
    assert "hooks" in plan.features
    name = f"bookend-hook-{point}-1.service"
    unit = settings(unit_text(plan, f"{UNITS}/{name}"))
    assert words(unit, "After") == after
    assert words(unit, "Before") == before
    assert unit["DefaultDependencies"] == ["no"]
    assert unit["Type"] == ["oneshot"]
    assert unit["ExecStart"] == ['/bin/sh -c "touch /run/x"']
    assert unit["ConditionPathExists"] == ["/etc/initrd-release"]
    # A failing hook is reported and the boot goes on, as with dracut's hooks.
    assert "OnFailure" not in unit
    # The initrd's default target pulls every hook in; the ordering places it.
    assert_link(plan, f"{UNITS}/initrd.target.wants/{name}", name)


def test_hooks_run_by_point_then_in_the_configured_order(root_tree: Path) -> None:
    configured = ["pre-pivot=echo a", "cmdline=echo b", "pre-pivot=echo c", "pre-udev=echo d"]
    plan = make_plan(config_for(root_tree, hooks=configured))
    names = [
        path.removeprefix(f"{UNITS}/")
        for path in generated(plan)
        if path.startswith(f"{UNITS}/bookend-hook-")
    ]
    assert names == [
        "bookend-hook-cmdline-1.service",
        "bookend-hook-pre-udev-1.service",
        "bookend-hook-pre-pivot-1.service",
        "bookend-hook-pre-pivot-2.service",
    ]
    commands = [settings(unit_text(plan, f"{UNITS}/{n}"))["ExecStart"] for n in names]
    assert commands == [[f'/bin/sh -c "echo {c}"'] for c in "bdac"]
    # Each after the one before it: cmdline before pre-udev, a before c.
    for previous, name in itertools.pairwise(names):
        assert previous in words(settings(unit_text(plan, f"{UNITS}/{name}")), "After")
    first = settings(unit_text(plan, f"{UNITS}/{names[0]}"))
    assert words(first, "After") == {"systemd-journald.socket"}


def test_hook_command_reaches_the_shell_unchanged() -> None:
    # systemd would expand %n and $x and take the quotes and backslash itself; each
    # is escaped so /bin/sh gets the text as written. (Checked against systemd 252's
    # own parsing with `systemd-analyze verify`, and by the boot tests.)
    command = 'echo "a\\b" $x ${y} 50% %n \'q"t\'\nline2\ttab'
    assert hooks.shell_exec_start(command) == (
        '/bin/sh -c "echo \\"a\\\\b\\" $$x $${y} 50%% %%n \'q\\"t\'\\nline2\\x09tab"'
    )


def test_hooks_bring_the_image_a_shell_not_their_programs(root_tree: Path) -> None:
    (root_tree / "usr/bin/dash").write_text("not really a shell\n")
    (root_tree / "usr/bin/sh").symlink_to("dash")
    (root_tree / "usr/bin/tool").write_text("")
    plan = make_plan(config_for(root_tree, hooks=["pre-mount=tool --now"]))
    shells = [r for r in plan.requests if r.kind is RequestKind.EXECUTABLE and r.name == "/bin/sh"]
    assert any(r.reason == "feature hooks" for r in shells)
    config = config_for(root_tree, hooks=["pre-mount=tool --now"])
    entries = closure_entries(config, hooks.FEATURE)
    assert "/usr/bin/dash" in entries
    # A hook's programs are the image's to provide (--add-file or a feature).
    assert "/usr/bin/tool" not in entries


def test_hooks_and_activation_from_a_config_file(root_tree: Path, tmp_path: Path) -> None:
    toml = tmp_path / "bookend.toml"
    toml.write_text(
        'activation = "/run/current-system/activate"\n'
        'hooks = ["pre-mount=touch /run/x", "mount=touch /run/y"]\n'
    )
    plan = make_plan(config_for(root_tree, toml))
    assert {"activation", "hooks"} <= set(plan.features)
    paths = generated(plan)
    assert f"{UNITS}/bookend-hook-pre-mount-1.service" in paths
    assert f"{UNITS}/bookend-hook-mount-1.service" in paths
    reason = paths[f"{UNITS}/bookend-hook-mount-1.service"].reason
    assert reason == f"feature hooks: hooks ({toml})"


def test_features_are_listed() -> None:
    assert ALL["activation"] is activation.FEATURE
    assert ALL["hooks"] is hooks.FEATURE
