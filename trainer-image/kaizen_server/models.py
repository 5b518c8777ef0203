"""What a server answers under which name, torch-free: its own model (``KAIZEN_MODEL_NAME``), the LoRA adapters it
holds beside it, and the weighted aliases between them (:class:`Registry`); which model answers a request
(:meth:`Registry.resolve`); and the change that brings the adapters in line with an :class:`AdapterSet`
(:meth:`Registry.plan`). :mod:`kaizen_server.app` does the loading, on its worker thread.

An alias splits its requests by weight; with session affinity the answer carries a marker (a header or a cookie
set to the answering version), and a request that echoes a version the alias splits to goes to that version, so a
conversation stays on the version that first answered it. The marker is the Rollout's ``sessionAffinity``: the
same header or cookie the gateway's pin rule matches.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kaizen.api.adapters import Adapter, AdapterSet, Alias, AliasTarget

#: Where an adapter came from: the watched file owns its own, the runtime endpoints theirs.
FILE, RUNTIME = "file", "runtime"


@dataclass(frozen=True)
class Served:
    """A model that answers: its name, the adapter (None: the server's own model), and its telemetry labels."""

    name: str
    adapter: str | None
    version: str
    track: str

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.name, self.version, self.track)


@dataclass(frozen=True)
class Resolved:
    """The answer to "who answers this request": the model, and the marker header to set on the answer."""

    served: Served
    marker: tuple[str, str] | None = None


class NotServed(LookupError):
    """No model of that name is served here; the message says what is."""


@dataclass
class Held:
    adapter: Adapter
    origin: str


@dataclass(frozen=True)
class Plan:
    """What to load (in order) and unload to hold an adapter set, and the aliases to serve once it is done."""

    load: tuple[Adapter, ...] = ()
    unload: tuple[str, ...] = ()
    aliases: tuple[Alias, ...] = ()
    problems: tuple[str, ...] = ()


def _cookie(header: str, name: str) -> str | None:
    match = re.search(rf"(?:^|;)\s*{re.escape(name)}=([^;]*)", header)
    return match.group(1).strip() if match else None


@dataclass
class Registry:
    """The names a server answers to. ``own`` is its own model (MODEL_URI), served under its name."""

    own: Served
    adapters: dict[str, Held] = field(default_factory=dict)
    aliases: dict[str, Alias] = field(default_factory=dict)
    choose: Callable[[], float] = random.random

    def served(self, name: str) -> Served:
        """A model (not an alias) by name."""
        if name == self.own.name:
            return self.own
        held = self.adapters.get(name)
        if held is None:
            raise NotServed(self._unknown(name))
        return Served(name, name, held.adapter.version, held.adapter.track)

    def resolve(self, name: str | None, headers: Mapping[str, str]) -> Resolved:
        """Who answers a request for ``name`` (None: the served name). Raises :class:`NotServed`."""
        name = name or self.own.name
        alias = self.aliases.get(name)
        if alias is None:
            return Resolved(self.served(name))
        targets = [(t, self.served(t.model)) for t in alias.targets]
        affinity, marker, pinned = alias.session_affinity, None, None
        if affinity is not None:
            echoed = (headers.get(affinity.header) if affinity.header is not None
                      else _cookie(headers.get("Cookie", ""), affinity.cookie or ""))
            pinned = next((s for _, s in targets if echoed and s.version == echoed), None)
        chosen = pinned or self._split(targets)
        if affinity is not None:
            marker = ((affinity.header, chosen.version) if affinity.header is not None
                      else ("Set-Cookie", f"{affinity.cookie}={chosen.version}; Path=/; HttpOnly"))
        return Resolved(chosen, marker)

    def _split(self, targets: list[tuple[AliasTarget, Served]]) -> Served:
        """A target drawn by weight (``choose`` draws in [0, 1))."""
        point = self.choose() * sum(t.weight for t, _ in targets)
        for target, served in targets:
            point -= target.weight
            if point < 0:
                return served
        return next(s for t, s in reversed(targets) if t.weight > 0)

    def _unknown(self, name: str) -> str:
        names = [self.own.name, *self.adapters, *(a for a in self.aliases if a != self.own.name)]
        return f"the model {name!r} is not served here; this server serves {', '.join(map(repr, names))} " \
               "(GET /v1/models)"

    def plan(self, wanted: AdapterSet) -> Plan:
        """The loads and unloads that make the file's adapters the ones held (adapters loaded at run time through
        the endpoints are left alone), and the aliases to serve after them: an alias naming an unknown model, or
        an adapter named as the server's own model, is left out with a problem saying so."""
        problems: list[str] = []
        wanted_adapters = []
        for adapter in wanted.adapters:
            held = self.adapters.get(adapter.name)
            if adapter.name == self.own.name:
                problems.append(f"adapter {adapter.name}: that is this server's own model name; left out")
            elif held is not None and held.origin == RUNTIME:
                problems.append(f"adapter {adapter.name}: loaded through /v1/load_lora_adapter already; left as is")
            else:
                wanted_adapters.append(adapter)
        names = {a.name for a in wanted_adapters}
        unload = tuple(n for n, h in self.adapters.items() if h.origin == FILE and (
            n not in names or h.adapter != next(a for a in wanted_adapters if a.name == n)))
        load = tuple(a for a in wanted_adapters if a.name in unload or a.name not in self.adapters)
        known = {self.own.name, *names, *(n for n, h in self.adapters.items() if h.origin == RUNTIME)}
        aliases = []
        for alias in wanted.aliases:
            missing = [t.model for t in alias.targets if t.model not in known]
            if missing:
                problems.append(f"alias {alias.name}: no model {', '.join(missing)} is served here; left out")
            else:
                aliases.append(alias)
        return Plan(load, unload, tuple(aliases), tuple(problems))
