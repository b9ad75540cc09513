"""The pure parts of the benchmark script (bench/): numbers in, markdown out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.guest import parse_times
from bench.measure import missing_paths
from bench.report import (
    HOSTONLY_COMPARISONS,
    BootStats,
    BuildStats,
    Generator,
    Spread,
    Target,
    build_time_bound,
    issue_targets,
    ratio,
    render_table,
    render_targets,
)
from bench.tools import add_crypt_hooks

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def build(wall: list[float], size_mib: float, identical: bool = True) -> BuildStats:
    return BuildStats(
        wall=Spread.of(wall),
        cpu=Spread.of([w * 2 for w in wall]),
        peak_rss_kib=Spread.of([100 * 1024, 300 * 1024, 200 * 1024]),
        compressed=int(size_mib * MIB),
        uncompressed=int(size_mib * 3 * MIB),
        entries=1234,
        identical=identical,
    )


def boots(switch_root: list[float]) -> BootStats:
    return BootStats(Spread.of(switch_root), Spread.of([s + 10 for s in switch_root]))


def test_spread_is_median_min_and_max_in_any_order() -> None:
    assert Spread.of([5.0, 1.0, 3.0, 9.0, 2.0]) == Spread(3.0, 1.0, 9.0)
    # An even count takes the mean of the middle two.
    assert Spread.of([4.0, 1.0, 2.0, 10.0]) == Spread(3.0, 1.0, 10.0)
    assert Spread.of([7.5]) == Spread(7.5, 7.5, 7.5)


def test_spread_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError) as error:
        Spread.of([])
    assert str(error.value) == "no measurements to summarise"


def test_ratio_divides_and_refuses_what_cannot_be_divided() -> None:
    assert ratio(1.5, 6.0) == 0.25
    assert ratio(None, 6.0) is None
    assert ratio(1.5, None) is None
    assert ratio(1.5, 0.0) is None


def test_table_has_a_row_per_metric_a_column_per_generator_and_the_ratios() -> None:
    generators = [Generator("bookend-hostonly", "bookend"), Generator("dracut-hostonly", "dracut")]
    builds = {
        "bookend-hostonly": build([2.0, 1.0, 3.0], 4.0),
        "dracut-hostonly": build([20.0, 10.0, 16.0], 16.0, identical=False),
    }
    table = render_table(
        generators, HOSTONLY_COMPARISONS[:1], builds, {"bookend-hostonly": boots([5, 6, 7])}
    ).splitlines()
    assert table[0] == "|  | bookend | dracut | bookend/dracut hostonly |"
    assert table[1] == "|---|---|---|---|"
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table[2:]}
    # Median (min-max); the ratio is of the medians: 2 / 16.
    assert rows["build wall time, s: median (min-max)"].endswith(
        "| 2.00 (1.00-3.00) | 16.00 (10.00-20.00) | 0.12 |"
    )
    assert rows["image size compressed, MiB"].endswith("| 4.0 | 16.0 | 0.25 |")
    assert rows["peak memory, MiB: median"].endswith("| 200.0 | 200.0 | 1.00 |")
    assert rows["byte-identical across two builds"].endswith("| yes | no | - |")
    # dracut was not booted: its cell and the ratio say so rather than inventing a number.
    assert rows["guest: switch-root, s: median (min-max)"].endswith("| 6.00 (5.00-7.00) | - | - |")


def test_targets_say_whether_each_goal_was_met() -> None:
    builds = {
        "bookend-hostonly": build([1.0], 7.0),
        "dracut-hostonly": build([20.0], 10.0),
        "mkinitramfs-dep": build([1.5], 9.0),
    }
    found = issue_targets(
        builds,
        {
            "bookend-hostonly": boots([9.0]),
            "dracut-hostonly": boots([10.0]),
            "mkinitramfs-dep": boots([8.0]),
        },
        None,
    )
    measured = {target.name.split(":")[0] + str(target.limit): target.measured for target in found}
    assert measured == {
        "build time0.1": pytest.approx(0.05),
        "build time0.5": pytest.approx(1.0 / 1.5),
        "rebuild with nothing changed (bookend hostonly)0.3": None,
        "image size0.7": pytest.approx(0.7),
        "guest time to switch-root0.9": pytest.approx(0.9),
        "guest time to switch-root1.0": pytest.approx(9.0 / 8.0),
    }
    lines = render_targets(found).splitlines()[2:]
    met = [line.rsplit("|", 2)[1].strip() for line in lines]
    assert met == ["yes", "no", "-", "yes", "yes", "no"]
    assert "| not measured | 0.3 s |" in lines[2]


def test_target_over_its_limit_is_not_met() -> None:
    (line,) = render_targets([Target("rebuild", 0.31, 0.3, "s")]).splitlines()[2:]
    assert line == "| rebuild | 0.31 s | 0.3 s | no |"


def test_guest_times_take_the_bench_jobs_own_time_out_of_the_default_target() -> None:
    line = (
        "[  OK  ] BENCH-TIMES initrd=1500000 userspace=7250000 target=19000000 "
        "jobstart=15000000 jobend=16500000"
    )
    times = parse_times(line)
    assert times.switch_root == 7.25
    assert times.default_target == 17.5


def test_a_console_line_without_times_is_refused() -> None:
    with pytest.raises(ValueError) as error:
        parse_times("BENCH-TIMES initrd= userspace=")
    assert str(error.value) == "not a BENCH-TIMES line: 'BENCH-TIMES initrd= userspace='"


def test_missing_paths_match_whole_path_components() -> None:
    paths = frozenset({"usr/lib/systemd/systemd", "usr/sbin/lvm", "init"})
    assert missing_paths(paths, ("lib/systemd/systemd", "sbin/lvm", "init")) == []
    # "bin/lvm" is not a component suffix of "usr/sbin/lvm".
    assert missing_paths(paths, ("bin/lvm", "initrd.target")) == ["bin/lvm", "initrd.target"]


def test_crypt_hooks_read_from_the_unpacked_package(tmp_path: Path) -> None:
    crypt = tmp_path / "crypt"
    share = crypt / "usr/share/initramfs-tools"
    (share / "hooks").mkdir(parents=True)
    (share / "hooks/cryptroot").write_text(
        ". /lib/cryptsetup/functions\ncopy_exec /lib/cryptsetup/askpass\n"
        "copy_file library /lib/cryptsetup/functions /lib/cryptsetup/functions\n"
    )
    for script in ("local-top", "local-block", "local-bottom"):
        (share / "scripts" / script).mkdir(parents=True)
        (share / "scripts" / script / "cryptroot").write_text(f"# {script}\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    add_crypt_hooks(conf, crypt)
    lib = crypt / "lib/cryptsetup"
    assert (conf / "hooks/cryptroot").read_text().splitlines() == [
        f". {lib}/functions",
        f"copy_exec {lib}/askpass /lib/cryptsetup/askpass",
        f"copy_file library {lib}/functions /lib/cryptsetup/functions",
    ]
    assert (conf / "hooks/cryptroot").stat().st_mode & 0o111
    assert (conf / "scripts/local-block/cryptroot").read_text() == "# local-block\n"


def test_crypt_hooks_refuse_a_hook_they_do_not_recognise(tmp_path: Path) -> None:
    hooks = tmp_path / "crypt/usr/share/initramfs-tools/hooks"
    hooks.mkdir(parents=True)
    (hooks / "cryptroot").write_text("#!/bin/sh\n")
    with pytest.raises(RuntimeError, match="package changed"):
        add_crypt_hooks(tmp_path, tmp_path / "crypt")


def test_the_script_explains_itself() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench/run.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--runs", "--boots", "--quick", "--out"):
        assert option in result.stdout


def test_the_build_time_bound_splits_off_compression_and_says_by_how_much() -> None:
    builds = {
        "bookend-hostonly": build([1.2, 1.0, 1.4], 9.0),
        "bookend-uncompressed": build([0.5], 25.0),
        "dracut-hostonly": build([6.0], 14.0),
    }
    text = build_time_bound(builds)
    assert text is not None
    # 0.1 x 6 s = 0.6 s; 1.2 s is 0.6 s over; zstd took 1.2 - 0.5 s (CPU 2.4 - 1.0 s).
    assert "missed by 0.60 s (1.20 s against 0.60 s, 0.1 x dracut's 6.00 s)" in text
    assert "uncompressed takes 0.50 s (0.08 x dracut; CPU 1.00 s)" in text
    assert "compressing them takes 0.70 s of the 1.20 s (CPU 1.40 s)" in text
    builds["bookend-hostonly"] = build([0.55], 9.0)
    met = build_time_bound(builds)
    assert met is not None and "met: 0.55 s <= 0.60 s" in met
    del builds["bookend-uncompressed"]
    assert build_time_bound(builds) is None  # not measured: no claim
