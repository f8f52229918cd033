"""Function tools: parsing OpenAI's tool definitions and tool_choice, rendering tools into the
prompt, and the grammar that makes every generated call parse and validate.

Each family writes calls its own way (:class:`ToolFormat`, picked from the chat template by
:func:`tool_format`):

- Hermes (Qwen, and the default): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  one tag pair a call;
- Llama 3.x: a bare ``{"name": ..., "parameters": {...}}`` answer (after ``<|python_tag|>``
  when the model writes one), calls separated by ``; ``;
- Mistral: ``[TOOL_CALLS]`` and a JSON list of ``{"name", "arguments"}`` objects;
- Phi-4-mini: ``functools`` and such a list (its template reads the tools from the system
  message's ``tools`` field).

A chat template that knows about tools renders them itself; otherwise a generic system-prompt
section describes them and the format to the model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

from core.engine.params import GrammarSpec
from core.errors import InvalidRequestError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"  # Hermes'

GENERIC_TOOL_PROMPT = (
    "You can call functions. Their JSON signatures are inside <tools></tools>:\n<tools>\n{tools}\n"
    "</tools>\nTo call a function, answer with\n{layout}"
)


@dataclass(frozen=True)
class ToolFormat:
    """How a family writes its calls: ``open`` before them (and ``close`` after each, in
    Hermes'); the calls as one JSON ``array``, else one object each; the key of their
    arguments; ``bare``: a call may also open the answer without the marker (Llama 3)."""

    name: str
    open: str
    close: str = ""
    array: bool = False
    args_key: str = "arguments"
    bare: bool = False
    tools_in_system: bool = False  # the template reads the tools from the system message

    def call_text(self, name: str, arguments: Any) -> str:
        """One call as the model writes it (in a list's brackets for array formats)."""
        body = json.dumps({"name": name, self.args_key: arguments})
        if self.array:
            return f"{self.open}[{body}]"
        return f"{self.open}{body}{self.close}"

    def grammar(self, plan: ToolPlan, with_open_tag: bool = True) -> GrammarSpec:
        """A Lark grammar for one call (or several, if parallel) with validated arguments."""
        variants = [{"type": "object", "additionalProperties": False,
                     "required": ["name", self.args_key],
                     "properties": {"name": {"const": t.name}, self.args_key: t.parameters}}
                    for t in plan.tools]
        schema = {"oneOf": variants, "x-guidance": {"whitespace_flexible": False}}
        body = f"body: %json {json.dumps(schema)}\n"
        # a forced Llama 3 call is the bare JSON its models write for custom tools
        opening = f'"{self.open}" ' if with_open_tag and not self.bare else ""
        if self.array:
            more = ' ("," " " body)*' if plan.parallel else ""
            return GrammarSpec("lark", f'start: {opening}"[" body{more} "]"\n{body}')
        if self.close:
            first = f'{opening}body "{self.close}"'
            more = f' ("\\n" "{self.open}" body "{self.close}")*' if plan.parallel else ""
            return GrammarSpec("lark", f"start: {first}{more}\n{body}")
        more = ' (";" " " body)*' if plan.parallel else ""
        return GrammarSpec("lark", f"start: {opening}body{more}\n{body}")

    def prompt(self, plan: ToolPlan) -> str:
        """The system-prompt section for a template that does not render tools."""
        listing = "\n".join(json.dumps(t.as_openai()) for t in plan.tools)
        layout = self.call_text("<function-name>", "<arguments-object>").replace(
            '"<function-name>"', "<function-name>").replace('"<arguments-object>"',
                                                            "<arguments-object>")
        return GENERIC_TOOL_PROMPT.format(tools=listing, layout=layout)


HERMES = ToolFormat("hermes", CALL_OPEN, CALL_CLOSE)
LLAMA3_JSON = ToolFormat("llama3_json", "<|python_tag|>", args_key="parameters", bare=True)
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", array=True)
PHI4_MINI = ToolFormat("phi4_mini", "functools", array=True, tools_in_system=True)
TOOL_FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL, PHI4_MINI)}


@functools.lru_cache(maxsize=32)  # asked several times a request, of a few templates
def tool_format(chat_template: str) -> ToolFormat:
    """The format a chat template teaches its model (by the markers it writes), Hermes'
    when it names none."""
    if "[TOOL_CALLS]" in chat_template:
        return MISTRAL
    if "functools" in chat_template or "<|tool|>" in chat_template:
        return PHI4_MINI
    if CALL_OPEN in chat_template:
        return HERMES
    if "<|python_tag|>" in chat_template:
        return LLAMA3_JSON
    return HERMES


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


def call_grammar(plan: ToolPlan, fmt: ToolFormat = HERMES, *, with_open_tag: bool = True
                 ) -> GrammarSpec:
    """A Lark grammar for one call (or several, if parallel) with validated arguments."""
    return fmt.grammar(plan, with_open_tag)


def tools_system_prompt(plan: ToolPlan, fmt: ToolFormat = HERMES) -> str:
    return fmt.prompt(plan)


def render_history(messages: list[dict[str, Any]], fmt: ToolFormat = HERMES
                   ) -> list[dict[str, Any]]:
    """For templates without tool support: assistant tool calls become text in the model's
    format and tool results user-visible ``tool`` turns, so the next turn sees the whole
    exchange."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "".join(fmt.call_text(c["function"].get("name"),
                                          c["function"].get("arguments"))
                            for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m.get("content") or "") + calls})
        elif m["role"] == "tool":
            out.append({"role": "tool", "content": m.get("content") or ""})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out
