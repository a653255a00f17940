"""Route tables: every HTTP route is declared once, here and in the protocol modules, and the URL
matcher, the OpenAPI document (:mod:`maas.serving.protocol.openapi`) and the client's paths
(:mod:`maas.client`) are all derived from those declarations.

Path parameters are checked with the rules of :mod:`maas.names` (ASCII, whole-string, bounded: a
version is an int64, never a 5,000-digit number). The same patterns appear in the OpenAPI document,
so a fuzzer that generates schema-valid paths generates names the server accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from maas import names
from maas.errors import InvalidInput


@dataclass(frozen=True)
class Param:
    """A path parameter: its rule (a regex without anchors, valid in Python and ECMAScript), how its
    text becomes a value, and what a user is told when it does not match."""

    name: str
    pattern: str
    rule: str  # the message's explanation, e.g. "a positive integer of at most 18 digits"
    convert: Callable[[str], Any] = str

    def parse(self, text: str) -> Any:
        if not names.matches(self.pattern, text):
            raise InvalidInput(f"{self.name.capitalize()} must be {self.rule}. Received: {text[:200]!r}")
        return self.convert(text)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^{self.pattern}$"}


MODEL = Param("model", names.MODEL_PATTERN, names.MODEL_RULE)
VERSION = Param("version", names.VERSION_PATTERN, names.VERSION_RULE, int)
LABEL = Param("label", names.LABEL_PATTERN, names.LABEL_RULE)
PARAMS = {p.name: p for p in (MODEL, VERSION, LABEL)}
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


@dataclass(frozen=True)
class Route:
    """One route: the protocol it belongs to, what it does (``kind``), its method and path template,
    and what the OpenAPI document says of it."""

    protocol: str  # "tfserving" | "v2" | "service": the metrics' protocol tag
    kind: str
    method: str
    template: str  # "/v1/models/{model}/versions/{version}:predict"
    summary: str
    tag: str
    auth: bool = True  # needs an API key (when the service has auth on)
    request_body: dict[str, Any] | None = None  # OpenAPI requestBody
    ok: dict[str, Any] = field(default_factory=dict)  # OpenAPI 200 response
    errors: tuple[int, ...] = ()  # the error statuses it may answer (OpenAPI)

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(PARAMS[name] for name in _PLACEHOLDER.findall(self.template))

    def path(self, **values: Any) -> str:
        """The concrete path (the client's side): each value is checked against its rule first."""
        def fill(m: re.Match[str]) -> str:
            param = PARAMS[m[1]]
            text = str(values[param.name])
            param.parse(text)
            return text

        return _PLACEHOLDER.sub(fill, self.template)


@dataclass(frozen=True)
class Match:
    route: Route
    raw: dict[str, str]  # the path's parameter texts, not yet checked

    def values(self) -> dict[str, Any]:
        """The parameters, checked and converted; :class:`InvalidInput` names the first bad one."""
        return {p.name: p.parse(self.raw[p.name]) for p in self.route.params}


@dataclass(frozen=True)
class Lookup:
    """What a path and method found: a route, or the methods the path allows (405), or nothing (404)."""

    match: Match | None
    allowed: tuple[str, ...] = ()


class RouteTable:
    """Matches request paths against routes. A parameter's segment is any text without ``/`` or ``:``,
    so that a path of the right shape with a bad name is a 400 naming the rule, not a 404."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._compiled = [(_regex(r.template), r) for r in self.routes]

    def __add__(self, other: RouteTable) -> RouteTable:
        return RouteTable(self.routes + other.routes)

    def lookup(self, method: str, path: str) -> Lookup:
        allowed = []
        for regex, route in self._compiled:
            m = regex.fullmatch(path)
            if m is None:
                continue
            if route.method == method:
                return Lookup(Match(route, m.groupdict()))
            allowed.append(route.method)
        return Lookup(None, tuple(sorted(set(allowed))))

    def route(self, protocol: str, kind: str, *, with_params: Iterable[str] = ()) -> Route:
        """The route of ``protocol`` doing ``kind`` whose path takes exactly ``with_params``."""
        wanted = set(with_params)
        for route in self.routes:
            if route.protocol == protocol and route.kind == kind and {p.name for p in route.params} == wanted:
                return route
        raise KeyError(f"no {protocol} {kind} route with parameters {sorted(wanted)}")


def _regex(template: str) -> re.Pattern[str]:
    """``/v1/models/{model}:predict`` -> ``/v1/models/(?P<model>[^/:]+):predict`` (literals escaped)."""
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ..., literal
    return re.compile("".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/:]+)"
                              for i, part in enumerate(parts)))
