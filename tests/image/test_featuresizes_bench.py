"""bench/featuresizes.py on this machine: the base image and base + network really built,
read back, and reported; network must add to the initrd and nothing to the exitrd."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.featuresizes import BASE, WITH_NETWORK, measure, render_report
from bookend.resolve import newest_kernel

KVER = newest_kernel(Path("/")) or ""
pytestmark = pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules")


def test_network_adds_to_the_initrd_and_the_report_says_so(tmp_path: Path) -> None:
    built = measure(KVER, ["hostonly"], tmp_path, [BASE, WITH_NETWORK])
    base, network = (b for b in built)
    assert (base.variant, network.variant) == (BASE, WITH_NETWORK)
    added = network.initrd.minus(base.initrd)
    assert added.compressed > 0 and added.content > 0 and added.files > 0, added
    # The exitrd has no part of the network feature: a root's connection is the
    # storage feature's to take down.
    assert network.exitrd == base.exitrd
    blocks = render_report(built, KVER).split("\n\n")
    tables = [block for block in blocks if block.startswith("|")]
    assert [t.splitlines()[0].split("|")[1].strip() for t in tables] == [
        "initrd (hostonly)",
        "exitrd (hostonly)",
    ]
    initrd_rows = tables[0].splitlines()[2:]
    assert [row.split("|")[1].strip() for row in initrd_rows] == ["base", "base + network"]
    over_base = initrd_rows[1].split("|")[5].strip()
    assert over_base.startswith(f"+{added.compressed / 2**20:.2f} MiB (+"), over_base
