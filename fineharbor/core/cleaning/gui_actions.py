"""GUI agent actions normalised into one vocabulary (FineVision / smol2operator action space).

Unified calls, written as Python-style calls with keyword arguments and coordinates in [0, 1]
rounded to 4 decimals::

    click(x=0.31, y=0.77)            double_click(x, y)          right_click(x, y)
    move_mouse(x, y)                 long_press(x, y)
    drag(from_coord=[x1, y1], to_coord=[x2, y2])                 swipe(from_coord, to_coord)
    scroll(direction='down', amount=10)                          type(text='hello')
    press(keys='enter') / press(keys=['ctrl', 'c'])              open_app(app_name='Chrome')
    navigate_home()   navigate_back()   wait(seconds=3)          final_answer(answer='done')

Input formats:

(a) pyautogui / AGUVIS strings, e.g. ``pyautogui.click(x=0.31, y=0.77)``,
    ``pyautogui.scroll(page=-0.1)``, ``pyautogui.hotkey('ctrl', 'c')`` and the AGUVIS mobile
    namespace (``mobile.home()``, ``mobile.swipe(from_coord=[..], to_coord=[..])``,
    ``mobile.terminate(status='success')``, ``answer('..')``). Parsed with :mod:`ast` and
    ``ast.literal_eval`` on the arguments only; nothing is ever evaluated. Prose lines around
    the calls (``Thought: ...``) are kept; a ``moveTo`` followed by a ``dragTo(x, y)`` becomes
    one ``drag``; a lone ``dragTo(x, y)`` (pyautogui: from wherever the pointer is) becomes
    ``drag(to_coord=[x, y])``. Already unified calls parse to themselves, so normalising twice
    is stable.
(b) Android-in-the-wild / AndroidControl style JSON objects, e.g.
    ``{"action_type": "click", "x": 540, "y": 1200}``, ``{"action_type": "scroll",
    "direction": "down"}``, ``{"action_type": "swipe", "touch": [x, y], "lift": [x, y]}``,
    ``{"action_type": "status", "goal_status": "complete"}``, and AITW's ``dual_point`` with
    ``touch_point`` / ``lift_point`` given as normalised ``[y, x]`` (a tap when they are within
    0.04 of each other, as in AITW's own evaluation).

Coordinates above 1 are pixels and are divided by the screenshot's width / height (the first
image of the sample, as displayed, before any resize); a pixel coordinate outside the screenshot
or a pixel action without an image is unparseable.

Scroll signs: ``page=`` values follow AGUVIS/smol2operator (negative = up/left, amount =
|page x 100|); integer ``clicks`` follow pyautogui itself (positive = up, negative = down;
for ``hscroll`` positive = right), amount = |clicks|.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_SCROLL_AMOUNT = 10  # smol2operator's amount for a scroll of 0.1 page
DEFAULT_WAIT_SECONDS = 1
MAX_ACTION_TEXT = 20_000
AITW_TAP_DISTANCE = 0.04
DIRECTIONS = ("up", "down", "left", "right")
UNIFIED = (
    "click",
    "double_click",
    "right_click",
    "move_mouse",
    "drag",
    "scroll",
    "type",
    "press",
    "swipe",
    "long_press",
    "open_app",
    "navigate_home",
    "navigate_back",
    "wait",
    "final_answer",
)

_PREFIXES = ("pyautogui.", "mobile.", "computer.", "device.", "pg.")
_CALL_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*\s*\(.*\)\s*;?\s*$", re.DOTALL)
_FENCE = re.compile(r"^\s*```")


class GuiActionError(ValueError):
    """An action that cannot be mapped to the unified space; the message is the detail."""


@dataclass(frozen=True)
class Action:
    """One unified action with raw (not yet normalised) coordinates."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        for name, value in self.args:
            if name == key:
                return value
        return default


Item = str | Action  # a prose line kept verbatim, or an action


# --------------------------------------------------------------------------- value helpers


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GuiActionError(f"{what} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise GuiActionError(f"{what} out of range: {value!r}")
    return number


def _pair(value: Any, what: str) -> tuple[float, float]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return _number(value[0], what), _number(value[1], what)
    raise GuiActionError(f"{what} is not an [x, y] pair: {value!r}")


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise GuiActionError(f"{what} is not text: {value!r}")


def _first(kwargs: dict, args: list, names: tuple[str, ...], index: int = 0) -> Any:
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[index] if len(args) > index else None


def _xy(args: list, kwargs: dict, *, required: bool) -> tuple[float, float] | None:
    for name in ("coordinate", "coords", "point", "position", "xy"):
        if name in kwargs:
            return _pair(kwargs[name], name)
    if args and isinstance(args[0], list | tuple):
        return _pair(args[0], "coordinate")
    x = kwargs.get("x", args[0] if len(args) > 0 else None)
    y = kwargs.get("y", args[1] if len(args) > 1 else None)
    if x is None and y is None:
        if required:
            raise GuiActionError("missing coordinates")
        return None
    if x is None or y is None:
        raise GuiActionError("only one coordinate given")
    return _number(x, "x"), _number(y, "y")


def _point_action(name: str, point: tuple[float, float] | None) -> Action:
    if point is None:
        return Action(name)
    return Action(name, (("x", point[0]), ("y", point[1])))


def _keys(value: Any) -> str | list[str]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(k, str) and k for k in value):
        return value[0] if len(value) == 1 else list(value)
    raise GuiActionError(f"keys are not a key name or a list of key names: {value!r}")


def _seconds(value: Any) -> float:
    if value is None:
        return float(DEFAULT_WAIT_SECONDS)
    return _number(value, "seconds")


# --------------------------------------------------------------------------- python calls


def _scroll(args: list, kwargs: dict, horizontal: bool) -> Action:
    if "direction" in kwargs or (args and isinstance(args[0], str)):
        direction = str(_first(kwargs, args, ("direction",))).lower()
        if direction not in DIRECTIONS:
            raise GuiActionError(f"unknown scroll direction {direction!r}")
        amount = _first(kwargs, args, ("amount",), 1)
        amount = DEFAULT_SCROLL_AMOUNT if amount is None else int(_number(amount, "amount"))
        return Action("scroll", (("direction", direction), ("amount", amount)))
    page = kwargs.get("page")
    value = page if page is not None else _first(kwargs, args, ("clicks", "amount"))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GuiActionError(f"scroll amount is not a number: {value!r}")
    is_page = page is not None or (isinstance(value, float) and not value.is_integer())
    if is_page:  # AGUVIS / smol2operator: negative = up (left), amount = |page * 100|
        negative_dir, positive_dir = ("left", "right") if horizontal else ("up", "down")
        amount = int(abs(value * 100))
    else:  # pyautogui clicks: scroll(+n) = up, hscroll(+n) = right
        negative_dir, positive_dir = ("left", "right") if horizontal else ("down", "up")
        amount = int(abs(value))
    direction = negative_dir if value < 0 else positive_dir
    return Action("scroll", (("direction", direction), ("amount", amount)))


def _drag(name: str, args: list, kwargs: dict) -> Action:
    start = kwargs.get("from_coord", kwargs.get("start"))
    end = kwargs.get("to_coord", kwargs.get("end"))
    if (
        start is None
        and end is None
        and len(args) == 2
        and all(isinstance(a, list | tuple) for a in args)
    ):
        start, end = args
    if start is None and end is None and len(args) == 4:
        start, end = args[:2], args[2:]
    if end is not None:
        from_coord = _pair(start, "from_coord") if start is not None else None
        to_coord = _pair(end, "to_coord")
    else:  # pyautogui.dragTo(x, y): from the current pointer position
        from_coord, to_coord = None, _xy(args, kwargs, required=True)
    pairs: list[tuple[str, Any]] = []
    if from_coord is not None:
        pairs.append(("from_coord", from_coord))
    pairs.append(("to_coord", to_coord))
    return Action(name, tuple(pairs))


def _python_action(name: str, args: list, kwargs: dict) -> Action:
    short = name
    for prefix in _PREFIXES:
        if short.startswith(prefix):
            short = short[len(prefix) :]
            break
    key = short.lower().replace("_", "")
    if key in ("click", "leftclick", "tap"):
        button = str(kwargs.get("button", "left")).lower()
        clicks = kwargs.get("clicks", 1)
        point = _xy(args, kwargs, required=False)
        if button == "right":
            return _point_action("right_click", point)
        if button != "left":
            raise GuiActionError(f"unsupported mouse button {button!r}")
        return _point_action("double_click" if clicks == 2 else "click", point)
    if key in ("doubleclick", "doubletap"):
        return _point_action("double_click", _xy(args, kwargs, required=False))
    if key == "rightclick":
        return _point_action("right_click", _xy(args, kwargs, required=False))
    if key in ("moveto", "movemouse", "hover", "move"):
        return _point_action("move_mouse", _xy(args, kwargs, required=True))
    if key in ("longpress", "longtap"):
        return _point_action("long_press", _xy(args, kwargs, required=True))
    if key in ("dragto", "drag"):
        return _drag("drag", args, kwargs)
    if key == "swipe":
        action = _drag("swipe", args, kwargs)
        if action.get("from_coord") is None:
            raise GuiActionError("swipe without a start point")
        return action
    if key in ("scroll", "vscroll", "hscroll"):
        return _scroll(args, kwargs, horizontal=key == "hscroll")
    if key in ("write", "typewrite", "type", "inputtext"):
        value = _first(kwargs, args, ("message", "text", "content", "string"))
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            value = "".join(value)
        return Action("type", (("text", _text(value, "text")),))
    if key == "hotkey":
        keys = list(args) if args else kwargs.get("keys", kwargs.get("key"))
        return Action("press", (("keys", _keys(keys)),))
    if key in ("press", "key", "keypress"):
        keys = _first(kwargs, args, ("keys", "key"))
        return Action("press", (("keys", _keys(keys)),))
    if key in ("openapp", "open", "launchapp"):
        app = _first(kwargs, args, ("app_name", "app", "name"))
        return Action("open_app", (("app_name", _text(app, "app_name")),))
    if key in ("home", "navigatehome", "presshome"):
        return Action("navigate_home")
    if key in ("back", "navigateback", "pressback"):
        return Action("navigate_back")
    if key in ("wait", "sleep"):
        return Action("wait", (("seconds", _seconds(_first(kwargs, args, ("seconds", "time")))),))
    if key in ("terminate", "answer", "finalanswer", "finished", "done"):
        value = _first(kwargs, args, ("answer", "status", "text", "content"))
        return Action(
            "final_answer", (("answer", _text(value if value is not None else "", "answer")),)
        )
    raise GuiActionError(f"unsupported action {name}")


_ACTION_KEYS = {
    "click", "leftclick", "tap", "doubleclick", "doubletap", "rightclick", "moveto", "movemouse",
    "hover", "move", "longpress", "longtap", "dragto", "drag", "swipe", "scroll", "vscroll",
    "hscroll", "write", "typewrite", "type", "inputtext", "hotkey", "press", "key", "keypress",
    "openapp", "open", "launchapp", "home", "navigatehome", "presshome", "back", "navigateback",
    "pressback", "wait", "sleep", "terminate", "answer", "finalanswer", "finished", "done",
}  # fmt: skip


def _is_action_name(name: str) -> bool:
    """In mixed prose, a call-shaped line is an action only under a known name or namespace."""
    if name.startswith(_PREFIXES):
        return True
    return name.lower().replace("_", "") in _ACTION_KEYS


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise GuiActionError("call target is not a name")


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
        raise GuiActionError(f"argument is not a literal ({type(error).__name__})") from None


def _from_call(node: ast.Call) -> Action:
    name = _dotted(node.func)
    args = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise GuiActionError("starred arguments are not supported")
        args.append(_literal(arg))
    kwargs = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise GuiActionError("**kwargs are not supported")
        kwargs[keyword.arg] = _literal(keyword.value)
    return _python_action(name, args, kwargs)


def _parse_call(source: str) -> Action:
    try:
        tree = ast.parse(source.strip().rstrip(";"), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        raise GuiActionError(f"not a call: {type(error).__name__}") from None
    if not isinstance(tree.body, ast.Call):
        raise GuiActionError("not a call")
    return _from_call(tree.body)


# --------------------------------------------------------------------------- JSON objects


def _json_point(obj: dict) -> tuple[float, float] | None:
    if "x" in obj or "y" in obj:
        return _xy([], {"x": obj.get("x"), "y": obj.get("y")}, required=True)
    for key in ("coordinate", "coords", "point", "touch", "touch_xy", "position"):
        if key in obj:
            return _pair(obj[key], key)
    return None


def _json_action(obj: Any) -> Action:
    if not isinstance(obj, dict):
        raise GuiActionError("JSON action is not an object")
    kind = obj.get("action_type", obj.get("action", obj.get("type")))
    if not isinstance(kind, str):
        raise GuiActionError(f"unknown action_type {kind!r}")
    key = kind.lower().replace("-", "_")
    if key in ("click", "tap", "touch"):
        point = _json_point(obj)
        if point is None:
            raise GuiActionError("click without coordinates")
        return _point_action("click", point)
    if key in ("double_click", "double_tap"):
        return _point_action("double_click", _json_point(obj))
    if key == "right_click":
        return _point_action("right_click", _json_point(obj))
    if key in ("long_press", "long_tap"):
        point = _json_point(obj)
        if point is None:
            raise GuiActionError("long_press without coordinates")
        return _point_action("long_press", point)
    if key in ("move_mouse", "hover", "move"):
        return _point_action("move_mouse", _json_point(obj) or _xy([], {}, required=True))
    if key == "dual_point":  # AITW: normalised [y, x] points
        touch = _pair(obj.get("touch_point"), "touch_point")
        lift = _pair(obj.get("lift_point"), "lift_point")
        touch_xy, lift_xy = (touch[1], touch[0]), (lift[1], lift[0])
        if math.dist(touch_xy, lift_xy) <= AITW_TAP_DISTANCE:
            return _point_action("click", touch_xy)
        return Action("swipe", (("from_coord", touch_xy), ("to_coord", lift_xy)))
    if key in ("swipe", "scroll", "drag"):
        start = obj.get("touch", obj.get("from_coord", obj.get("start")))
        end = obj.get("lift", obj.get("to_coord", obj.get("end")))
        if start is not None or end is not None:
            name = "drag" if key == "drag" else "swipe"
            return Action(
                name, (("from_coord", _pair(start, "touch")), ("to_coord", _pair(end, "lift")))
            )
        if key in ("scroll", "swipe") and "direction" in obj:
            return _scroll([], {"direction": obj["direction"], "amount": obj.get("amount")}, False)
        raise GuiActionError(f"{key} without a direction or start/end points")
    if key in ("type", "input_text", "typing", "text", "input"):
        return Action("type", (("text", _text(obj.get("text", obj.get("content")), "text")),))
    if key in ("open_app", "launch_app", "open"):
        app = obj.get("app_name", obj.get("app", obj.get("name")))
        return Action("open_app", (("app_name", _text(app, "app_name")),))
    if key in ("navigate_home", "press_home", "home"):
        return Action("navigate_home")
    if key in ("navigate_back", "press_back", "back"):
        return Action("navigate_back")
    if key == "press_enter":
        return Action("press", (("keys", "enter"),))
    if key in ("press", "key", "keypress", "hotkey", "press_key"):
        return Action("press", (("keys", _keys(obj.get("keys", obj.get("key")))),))
    if key in ("wait", "sleep"):
        return Action("wait", (("seconds", _seconds(obj.get("seconds", obj.get("time")))),))
    if key in ("status", "terminate"):
        value = obj.get("goal_status", obj.get("status", obj.get("answer", "")))
        return Action("final_answer", (("answer", _text(value, "goal_status")),))
    if key in ("answer", "final_answer"):
        value = obj.get("text", obj.get("answer", obj.get("content", "")))
        return Action("final_answer", (("answer", _text(value, "answer")),))
    raise GuiActionError(f"unsupported action_type {kind!r}")


def _parse_json(text: str) -> list[Action]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        try:  # a Python dict repr ({'action_type': 'click', ...})
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise GuiActionError("malformed JSON action") from None
    if isinstance(value, list):
        if not value:
            raise GuiActionError("empty action list")
        return [_json_action(item) for item in value]
    return [_json_action(value)]


# --------------------------------------------------------------------------- parse and render


def parse_actions(text: str | None) -> list[Item]:
    """Parse an assistant turn into prose lines and actions. Raises :class:`GuiActionError`."""
    if not isinstance(text, str) or not text.strip():
        raise GuiActionError("empty action")
    if len(text) > MAX_ACTION_TEXT:
        raise GuiActionError(f"action text of {len(text)} chars > {MAX_ACTION_TEXT}")
    body = "\n".join(line for line in text.strip().splitlines() if not _FENCE.match(line)).strip()
    items: list[Item] = list(_parse_json(body)) if body[:1] in "{[" else _parse_program(body)
    items = _merge_drags(items)
    if not any(isinstance(item, Action) for item in items):
        raise GuiActionError("no action found")
    return items


def _parse_program(body: str) -> list[Item]:
    try:
        tree = ast.parse(body, mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        tree = None
    if (
        tree is not None
        and tree.body
        and all(
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) for stmt in tree.body
        )
    ):
        return [_from_call(stmt.value) for stmt in tree.body]  # type: ignore[attr-defined]
    items: list[Item] = []
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            items.extend(_parse_json(stripped))
        elif _CALL_LINE.match(stripped) and _is_action_name(stripped.split("(", 1)[0].strip()):
            items.append(_parse_call(stripped))
        else:
            items.append(line)
    return items


def _merge_drags(items: list[Item]) -> list[Item]:
    """``moveTo(a)`` + ``dragTo(b)`` -> ``drag(from_coord=a, to_coord=b)``; a lone ``dragTo(b)``
    (pyautogui: drag from wherever the pointer is) stays ``drag(to_coord=b)``."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, Action) and item.name == "drag" and item.get("from_coord") is None:
            previous = next(
                (i for i in range(len(out) - 1, -1, -1) if isinstance(out[i], Action)), None
            )
            move = out[previous] if previous is not None else None
            if isinstance(move, Action) and move.name == "move_mouse":
                del out[previous]
                start = (move.get("x"), move.get("y"))
                item = Action("drag", (("from_coord", start), ("to_coord", item.get("to_coord"))))
            # otherwise the drag starts at the current pointer: drag(to_coord=[x, y])
        out.append(item)
    return out


def _coords(action: Action) -> list[float]:
    values: list[float] = []
    for name, value in action.args:
        if name in ("x", "y"):
            values.append(value)
        elif name in ("from_coord", "to_coord"):
            values.extend(value)
    return values


def _fmt_num(value: float) -> str:
    return repr(float(round(value, 4)))


def _fmt_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(round(value, 3))
    return repr(value)


def render_action(action: Action, image_size: tuple[int, int] | None = None) -> str:
    """The unified call string, coordinates normalised to [0, 1] and rounded to 4 decimals."""
    pixels = any(v > 1.0 for v in _coords(action))
    if pixels and not image_size:
        raise GuiActionError(f"{action.name}: pixel coordinates but no screenshot size")
    width, height = image_size or (1, 1)

    def norm(value: float, extent: int, axis: str) -> float:
        out = value / extent if pixels else value
        if out > 1.0 + 1e-9:
            where = f" of a {width}x{height} screenshot" if pixels else ""
            raise GuiActionError(f"{action.name}: {axis}={value:g} outside [0, 1]{where}")
        return min(out, 1.0)

    parts = []
    for name, value in action.args:
        if name in ("x", "y"):
            extent = width if name == "x" else height
            parts.append(f"{name}={_fmt_num(norm(value, extent, name))}")
        elif name in ("from_coord", "to_coord"):
            x, y = norm(value[0], width, "x"), norm(value[1], height, "y")
            parts.append(f"{name}=[{_fmt_num(x)}, {_fmt_num(y)}]")
        else:
            parts.append(f"{name}={_fmt_value(value)}")
    return f"{action.name}({', '.join(parts)})"


def render_items(items: list[Item], image_size: tuple[int, int] | None = None) -> str:
    return "\n".join(
        render_action(item, image_size) if isinstance(item, Action) else item for item in items
    )


def normalize_action_text(text: str | None, image_size: tuple[int, int] | None = None) -> str:
    """Parse and render in one go. Raises :class:`GuiActionError` with the detail."""
    return render_items(parse_actions(text), image_size)
