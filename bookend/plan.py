"""The plan: what the enabled features and the configuration ask the image to hold.

Plain data in (a Config), plain data out (a Plan); nothing is read from the sysroot
here except what a feature's `compute` needs to generate a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bookend.config import Config
from bookend.errors import ConfigError
from bookend.features import ALL, DEFAULT
from bookend.features.base import Feature, Generated, Request, RequestKind


@dataclass(frozen=True)
class Plan:
    features: tuple[str, ...]  # enabled, dependencies first
    requests: tuple[Request, ...]
    generated: tuple[Generated, ...]


def enabled_features(names: Iterable[str], source: str = "features") -> list[Feature]:
    """The named features and everything they require, each before its dependents."""
    ordered: dict[str, Feature] = {}

    def visit(name: str, wanted_by: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        feature = ALL.get(name)
        if feature is None:
            from bookend.config import did_you_mean

            raise ConfigError(
                f"{wanted_by}: unknown feature '{name}'" + did_you_mean(name, list(ALL))
            )
        if name in path:
            raise ConfigError(f"feature {name}: requires itself via {' -> '.join(path)}")
        for required in feature.requires:
            visit(required, f"feature {name}", (*path, name))
        ordered[name] = feature

    for name in names:
        visit(name, source, ())
    return list(ordered.values())


def config_requests(config: Config) -> list[Request]:
    """What the user named directly."""
    origin = config.origins
    requests = [
        Request(RequestKind.MODULE, name, f"modules ({origin.get('modules', 'config')})")
        for name in config.modules
    ]
    requests += [
        Request(RequestKind.PATH, name, f"files ({origin.get('files', 'config')})")
        for name in config.files
    ]
    return requests


def make_plan(config: Config) -> Plan:
    features = enabled_features([*DEFAULT, *config.features])
    requests: list[Request] = []
    generated: list[Generated] = []
    for feature in features:
        requests += feature.requests()
        for item in feature.compute(config) if feature.compute else ():
            if isinstance(item, Request):
                requests.append(item)
            else:
                generated.append(item)
    requests += config_requests(config)
    return Plan(
        features=tuple(f.name for f in features),
        requests=tuple(requests),
        generated=tuple(generated),
    )


def format_plan(plan: Plan) -> str:
    """The plan as text, one request a line, grouped by feature order."""
    lines = [f"features: {', '.join(plan.features)}"]
    for request in plan.requests:
        optional = " (if present)" if request.optional else ""
        lines.append(f"{request.kind.value:11} {request.name}{optional}  <- {request.reason}")
    for item in plan.generated:
        lines.append(f"{'generated':11} {item.entry.path}  <- {item.reason}")
    return "\n".join(lines)
