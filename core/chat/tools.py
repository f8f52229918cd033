"""Function tools: parsing OpenAI's tool definitions and tool_choice, rendering tools into the
prompt, and the grammar that makes every generated call parse and validate.

Calls use the Hermes/Qwen layout ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
A chat template that knows about tools renders them itself; otherwise a generic system-prompt
section (``GENERIC_TOOL_PROMPT``) describes them and this layout to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

from core.engine.params import GrammarSpec
from core.errors import InvalidRequestError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

GENERIC_TOOL_PROMPT = (
    "You can call functions. Their JSON signatures are inside <tools></tools>:\n<tools>\n{tools}\n"
    "</tools>\nTo call a function, answer with\n" + CALL_OPEN
    + '{{"name": <function-name>, "arguments": <arguments-object>}}' + CALL_CLOSE
)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description":
                self.description, "parameters": self.parameters}}


ToolMode = Literal["none", "auto", "required"]
TOOL_MODES: tuple[ToolMode, ...] = get_args(ToolMode)


@dataclass(frozen=True)
class ToolPlan:
    """Which tools the model may call and whether it must: mode is none, auto or required."""

    tools: tuple[ToolSpec, ...]
    mode: ToolMode
    parallel: bool = True


def parse_tools(tools: list[dict[str, Any]] | None) -> list[ToolSpec]:
    """Function tools in the nested chat form or the flat (Responses) form."""
    specs = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequestError(f"tools[{i}]: only function tools are supported",
                                      param=f"tools[{i}].type")
        fn = tool.get("function", tool)
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{i}] has no function name", param=f"tools[{i}]")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise InvalidRequestError(f"tools[{i}].parameters must be a JSON schema object",
                                      param=f"tools[{i}].parameters")
        specs.append(ToolSpec(name, str(fn.get("description") or ""), params))
    return specs


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None,
               parallel: bool | None = None) -> ToolPlan:
    """Resolve ``tools`` + ``tool_choice`` (none, auto, required, a named function, or
    allowed_tools) into a plan; asking for a tool that is not there is a 400."""
    specs = parse_tools(tools)
    choice = tool_choice if tool_choice is not None else ("auto" if specs else "none")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools", choice)
        names = {_tool_name(t) for t in allowed.get("tools", [])}
        specs = [s for s in specs if s.name in names]
        choice = allowed.get("mode", "auto")
    if isinstance(choice, dict):
        name = _tool_name(choice)
        specs = [s for s in specs if s.name == name]
        if not specs:
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not in tools",
                                      param="tool_choice")
        return ToolPlan(tuple(specs), "required", parallel=False)
    if not _is_tool_mode(choice):
        raise InvalidRequestError("tool_choice must be none, auto, required or a function",
                                  param="tool_choice")
    if choice == "required" and not specs:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool",
                                  param="tool_choice")
    return ToolPlan(tuple(specs), choice if specs else "none", parallel is not False)


def _is_tool_mode(value: object) -> TypeGuard[ToolMode]:
    return value in TOOL_MODES


def _tool_name(ref: dict[str, Any]) -> str:
    fn = ref.get("function", ref)
    return str(fn.get("name", "")) if isinstance(fn, dict) else ""


def call_grammar(plan: ToolPlan, *, with_open_tag: bool = True) -> GrammarSpec:
    """A Lark grammar for one call (or several, if parallel) with validated arguments."""
    variants = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                 "properties": {"name": {"const": t.name}, "arguments": t.parameters}}
                for t in plan.tools]
    schema = {"oneOf": variants, "x-guidance": {"whitespace_flexible": False}}
    first = f'"{CALL_OPEN}" body "{CALL_CLOSE}"' if with_open_tag else f'body "{CALL_CLOSE}"'
    more = f' ("\\n" "{CALL_OPEN}" body "{CALL_CLOSE}")*' if plan.parallel else ""
    return GrammarSpec("lark", f"start: {first}{more}\nbody: %json {json.dumps(schema)}\n")


def tools_system_prompt(plan: ToolPlan) -> str:
    listing = "\n".join(json.dumps(t.as_openai()) for t in plan.tools)
    return GENERIC_TOOL_PROMPT.format(tools=listing)


def render_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates without tool support: assistant tool calls become ``<tool_call>`` text and
    tool results user-visible ``tool`` turns, so the next turn sees the whole exchange."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "".join(CALL_OPEN + json.dumps({"name": c["function"].get("name"),
                                                    "arguments": c["function"].get("arguments")})
                            + CALL_CLOSE for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m.get("content") or "") + calls})
        elif m["role"] == "tool":
            out.append({"role": "tool", "content": m.get("content") or ""})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out
