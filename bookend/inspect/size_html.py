"""`bookend size --html`: one self-contained HTML file with a treemap of the report.

The page lays the treemap out itself, in a few lines of JavaScript
(bookend/data/size-treemap.html): the rectangles depend on the window's size and on
which directory the reader has zoomed into, which only the browser knows. Python only
hands over the trees, as JSON inside the page; nothing is fetched from anywhere.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from bookend.archive.atomic import write_atomically
from bookend.inspect.size import SizeReport, collapse_chains, collapse_groups, report_json

TEMPLATE = "size-treemap.html"
DATA_MARK = "/*BOOKEND-SIZE-DATA*/"


def page_data(report: SizeReport) -> dict[str, object]:
    """The report as the page reads it: chains of single directories already merged."""
    data = report_json(report)
    views: dict[str, object] = {}
    for view, tree in report.views.items():
        collapse = collapse_chains if view == "directory" else collapse_groups
        views[view] = collapse(tree).to_json() if tree else None
    data["views"] = views
    return data


def render_html(report: SizeReport) -> str:
    template = resources.files("bookend").joinpath("data", TEMPLATE).read_text()
    # Inside <script>, "</script>" (or any "<!--") in a file name would end the data
    # early; escaping every "<" keeps the JSON valid and the markup intact.
    data = json.dumps(page_data(report), ensure_ascii=True).replace("<", "\\u003c")
    return template.replace(DATA_MARK, data, 1)


def write_html(report: SizeReport, output: Path) -> None:
    """Write the page to output atomically: a reader never sees half a page."""
    content = render_html(report).encode()

    def write(stream: BinaryIO) -> None:
        stream.write(content)

    write_atomically(output, write, mode=0o644)
