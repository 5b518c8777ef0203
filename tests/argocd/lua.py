"""Argo CD's Lua environment for resource customizations, on a real Lua 5.1 interpreter (lupa), to test Kaizen's
health checks and actions as Argo CD runs them (argo-cd ``util/lua/lua.go``, ``oslib_safe.go``).

What Argo CD does, and this module does too:
- the interpreter is gopher-lua, Lua 5.1: so is this one;
- scripts from ``argocd-cm`` run without the standard libraries (unless ``useOpenLibs``): only ``package``, the base
  library, ``table``, and a safe ``os`` holding ``time`` and ``date`` that only ``require("os")`` returns (Argo CD
  registers those two functions into ``table``, and no ``os`` global). No ``string``, no ``math``, and no string
  methods (``("x"):find`` fails), so scripts are tested here in the strictest form Argo CD runs them;
- the live object is the global ``obj``, JSON types mapped to Lua's (every number a double);
- the script's return value goes through gopher-json's encoder: an empty table is ``[]``, a table is an array only
  with keys 1..n, mixed keys are an error; a health result must have a known status (else Unknown); an action's
  result has Argo CD's ``cleanReturnedObj`` applied (an empty table where the object had a map keeps the map).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import lupa.lua51 as lupa51

HEALTH_STATUSES = ("Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing")
INVALID_HEALTH = "Lua returned an invalid health status"
#: The clock of the committed action tests: their expected outputs carry this time.
ACTION_TIME = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
#: Go time layouts of argo-cd's strftime (oslib_safe.go cDateFlagToGo), as Python strftime directives.
_DATE_FLAGS = {"a": "%a", "A": "%A", "b": "%b", "B": "%B", "c": "%d %b %y %H:%M %Z", "d": "%d", "F": "%Y-%m-%d",
               "H": "%H", "I": "%I", "m": "%m", "M": "%M", "p": "%p", "P": "%p", "S": "%S", "x": "%H/%M/%S",
               "X": "%H:%M:%S", "y": "%y", "Y": "%Y", "z": "%z", "Z": "%Z"}


class LuaError(Exception):
    """The script failed, or returned what Argo CD cannot use."""


def strftime(moment: datetime, layout: str) -> str:
    """os.date's formatting as argo-cd's safe os library does it: unknown flags are kept as written."""
    out, i = [], 0
    while i < len(layout):
        c = layout[i]
        if c == "%" and i + 1 < len(layout):
            flag = layout[i + 1]
            if flag == "%":
                out.append("%")
            elif flag in _DATE_FLAGS:
                text = moment.strftime(_DATE_FLAGS[flag])
                out.append(text.lower() if flag == "P" else text)
            elif flag == "w":
                out.append(str((moment.weekday() + 1) % 7))
            else:
                out.append("%" + flag)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class ArgoLua:
    """One script run, as Argo CD's ``VM.runLua``: a fresh state, ``obj`` set, the script executed."""

    def __init__(self, now: datetime | None = None, open_libs: bool = False) -> None:
        self.now = now  # None: the wall clock, as in Argo CD
        self.open_libs = open_libs

    def _clock(self) -> datetime:
        return self.now or datetime.now(timezone.utc)

    def _runtime(self) -> lupa51.LuaRuntime:
        lua = lupa51.LuaRuntime(register_eval=False, register_builtins=False, unpack_returned_tuples=True)
        if self.open_libs:
            return lua

        def os_date(layout: str = "%c", at: float | None = None) -> Any:
            moment = self._clock()
            if layout.startswith("!"):
                layout = layout.lstrip("!")
                moment = moment.astimezone(timezone.utc)
            if at is not None:
                moment = datetime.fromtimestamp(int(at), timezone.utc)
            if layout.startswith("*t"):
                return lua.table_from({"year": moment.year, "month": moment.month, "day": moment.day,
                                       "hour": moment.hour, "min": moment.minute, "sec": moment.second,
                                       "wday": (moment.weekday() + 1) % 7 + 1, "yday": 0, "isdst": False})
            return strftime(moment, layout)

        def os_time(fields: Any = None) -> float:
            if fields is None:
                return float(int(self._clock().timestamp()))
            moment = datetime(int(fields["year"]), int(fields["month"]), int(fields["day"]),
                              int(fields["hour"] if fields["hour"] is not None else 12),
                              int(fields["min"] or 0), int(fields["sec"] or 0), tzinfo=timezone.utc)
            return float(int(moment.timestamp()))

        # Keep what argo-cd's runLua opens (package, base, table, its safe os) and drop the rest, string methods
        # included: gopher-lua without OpenString has no string metatable.
        strip = lua.eval("""function(date, time)
            debug.setmetatable("", nil)
            local safe = {date = date, time = time}
            table.date, table.time = date, time
            package.preload["os"] = function() return safe end
            package.loaded["os"], package.loaded["string"], package.loaded["math"] = nil, nil, nil
            package.loaded["io"], package.loaded["debug"], package.loaded["coroutine"] = nil, nil, nil
            os, string, math, io, debug, coroutine = nil, nil, nil, nil, nil, nil
            dofile, loadfile, python = nil, nil, nil
        end""")
        strip(os_date, os_time)
        return lua

    def run(self, script: str, obj: dict[str, Any]) -> Any:
        """Run ``script`` with the global ``obj``; return its value as Argo CD's JSON encoder gives it."""
        lua = self._runtime()
        lua.globals()["obj"] = to_lua(lua, obj)
        try:
            value = lua.execute(script)
        except lupa51.LuaError as error:
            raise LuaError(str(error)) from error
        if lupa51.lua_type(value) != "table":
            raise LuaError(f"expect table output from Lua script, not {lupa51.lua_type(value) or type(value).__name__}")
        return encode(value)

    def health(self, script: str, obj: dict[str, Any]) -> dict[str, str]:
        """``ExecuteHealthLua``: {status, message}; an unknown status becomes Unknown, as in Argo CD."""
        result = self.run(script, obj)
        if not isinstance(result, dict) or result.get("status") not in HEALTH_STATUSES:
            return {"status": "Unknown", "message": INVALID_HEALTH}
        return {"status": result["status"], "message": result.get("message", "")}

    def discover(self, script: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """``ExecuteResourceActionDiscovery``: the actions, each {name, disabled[, displayName, iconClass]}."""
        result = self.run(script, obj)
        if result == []:
            return []
        if not isinstance(result, dict):
            raise LuaError("action discovery must return a table of actions by name")
        actions = []
        for name, value in result.items():
            action = {"name": name, "disabled": False}
            if isinstance(value, dict):
                action.update({k: v for k, v in value.items() if k in ("disabled", "displayName", "iconClass")})
                if not isinstance(action["disabled"], bool):
                    action["disabled"] = False
            actions.append(action)
        return actions

    def act(self, script: str, obj: dict[str, Any]) -> dict[str, Any]:
        """``ExecuteResourceAction`` of an old-style action (one returned object, applied as a patch)."""
        result = self.run(script, obj)
        if not isinstance(result, dict):
            raise LuaError("a Kaizen action returns the modified obj")
        return clean_returned(result, obj)


def to_lua(lua: lupa51.LuaRuntime, value: Any) -> Any:
    """A JSON value as argo-cd's ``decodeValue`` gives it to Lua: numbers as doubles, null as nil."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"not a JSON value: {value!r}")


def encode(value: Any) -> Any:
    """gopher-json's Encode of a Lua value, as Python JSON values (integral numbers as int, as Go prints them)."""
    kind = lupa51.lua_type(value)
    if kind == "table":
        items = list(value.items())
        if not items:
            return []
        keys = [k for k, _ in items]
        if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys):
            if sorted(keys) != list(range(1, len(keys) + 1)):
                raise LuaError("cannot encode sparse array")
            return [encode(value[i]) for i in range(1, len(keys) + 1)]
        if all(isinstance(k, str) for k in keys):
            return {k: encode(v) for k, v in items}
        raise LuaError("cannot encode mixed or invalid key types")
    if kind is not None:  # function, userdata, thread
        raise LuaError(f"cannot encode {kind} to JSON")
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise LuaError("json: unsupported value: NaN or Inf")
        return int(value) if value.is_integer() else value
    return value


def clean_returned(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """argo-cd's ``cleanReturnedObj``: an empty table Lua returns where the object had a map keeps the map."""
    for key, old_value in old.items():
        if key not in new:
            continue
        new_value = new[key]
        if isinstance(new_value, dict) and isinstance(old_value, dict):
            new[key] = clean_returned(new_value, old_value)
        elif isinstance(new_value, list):
            if isinstance(old_value, dict) and not new_value:
                new[key] = old_value
            elif isinstance(old_value, list):
                new[key] = _clean_array(new_value, old_value)
    return new


def _clean_array(new: list[Any], old: list[Any]) -> list[Any]:
    for i, value in enumerate(new):
        if i < len(old):
            if isinstance(value, dict) and isinstance(old[i], dict):
                new[i] = clean_returned(value, old[i])
            elif isinstance(value, list) and isinstance(old[i], list):
                new[i] = _clean_array(value, old[i])
    return new


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values with 1 == 1.0, as Argo CD's action test compares through a diff."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b
