"""Tool calling in the OpenAI schema for local engines: tools into the prompt, a forced call as a prefill, and
the call read back out of the generated text.

Why here and not in the server: the prompt ids a call is trained on are built by `encode_prompt`, so the hf
and vllm engines must render tools the same way, and the server must parse with the same prefix the prompt
ended with. A model whose chat template renders tools gets `tools=` and the OpenAI-shaped messages; any other
gets strop's format, the Hermes/Qwen one (which vLLM's `hermes` parser also reads):

- a system block lists the tools as JSON and says how to call one, `<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`;
- an assistant message with `tool_calls` renders as its content followed by one such block per call;
- `tool` messages render as one user message of `<tool_response>...</tool_response>` blocks (templates such as
  SmolLM2's or tiny's know no `tool` role).

This module is a leaf: it reads messages by attribute and imports nothing from strop at run time.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator

if TYPE_CHECKING:
    from strop.agents.engines.base import Message

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CHOICES = ("none", "auto", "required")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's rule for function names
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


# ------------------------------------------------------------------------------------------ validation
def check_tool(spec: Any) -> dict[str, Any]:
    """One OpenAI tool spec, `{"type": "function", "function": {"name", "description", "parameters"}}`."""
    if not isinstance(spec, dict):
        raise ValueError('a tool is an object {"type": "function", "function": {"name": ...}}')
    if spec.get("type", "function") != "function":
        raise ValueError(f'tool type {spec.get("type")!r} is not supported: only "function" tools')
    unknown = set(spec) - {"type", "function"}
    if unknown:
        raise ValueError(
            f"unknown tool field(s) {', '.join(sorted(unknown))}: a tool has `type` and `function`"
        )
    fn = spec.get("function")
    if not isinstance(fn, dict):
        raise ValueError("a tool needs `function`, an object with at least a `name`")
    name = fn.get("name")
    if name is None:
        raise ValueError("a tool's `function` needs a `name`")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"function.name {name!r} must be 1-64 characters of a-z, A-Z, 0-9, _, . or -")
    unknown = set(fn) - _FUNCTION_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))} in function {name!r}")
    if "parameters" in fn and not isinstance(fn["parameters"], dict):
        raise ValueError(f"function {name!r}: `parameters` must be a JSON schema object")
    if not isinstance(fn.get("description", ""), str):
        raise ValueError(f"function {name!r}: `description` must be a string")
    return {"type": "function", "function": fn}


ToolSpec = Annotated[dict[str, Any], AfterValidator(check_tool)]


def tool_names(tools: Sequence[dict[str, Any]] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or []]


def tool_mode(
    tools: Sequence[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None
) -> tuple[str, str]:
    """("off" | "auto" | "required" | "named", the named function or ""). Assumes `check_tool_choice` passed."""
    if not tools or tool_choice == "none":
        return "off", ""
    if isinstance(tool_choice, dict):
        return "named", str(tool_choice["function"]["name"])
    return (tool_choice or "auto"), ""


def check_tool_choice(
    tools: Sequence[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None
) -> None:
    """Refuse a tool_choice that cannot be honoured, naming what to send instead."""
    if tool_choice is None:
        return
    if isinstance(tool_choice, str):
        if tool_choice not in _CHOICES:
            raise ValueError(
                f"`tool_choice` {tool_choice!r} is not one of {', '.join(_CHOICES)} or "
                '{"type": "function", "function": {"name": ...}}'
            )
        if tool_choice == "required" and not tools:
            raise ValueError("`tool_choice` 'required' needs `tools`: send the tools the model may call")
        return
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if tool_choice.get("type", "function") != "function" or not isinstance(fn, dict) or "name" not in fn:
        raise ValueError('a named `tool_choice` is {"type": "function", "function": {"name": ...}}')
    names = tool_names(tools)
    if fn["name"] not in names:
        raise ValueError(
            f"`tool_choice` names function {fn['name']!r}, which is not in `tools` "
            f"({', '.join(repr(n) for n in names) or 'none given'})"
        )


# ------------------------------------------------------------------------------------------- rendering
def _template_source(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    return " ".join(template.values()) if isinstance(template, dict) else str(template)


def renders_tools(tokenizer: Any) -> bool:
    """The model's own chat template renders tools (it reads a `tools` variable), so strop's format is not used."""
    return tokenizer is not None and "tools" in _template_source(tokenizer)


def call_prefix(tokenizer: Any, tools: Sequence[dict[str, Any]] | None, tool_choice: Any) -> str:
    """Text that opens the assistant turn so the model must call: the prompt ends with it, so only what the
    model samples after it takes loss. Empty for auto/none, and for native templates that do not use
    `<tool_call>` tags (their format is theirs; the reply is parsed as it comes).
    """
    mode, name = tool_mode(tools, tool_choice)
    if mode not in ("required", "named"):
        return ""
    native = renders_tools(tokenizer)
    if native and TOOL_CALL_OPEN not in _template_source(tokenizer):
        return ""
    opening = TOOL_CALL_OPEN + ("\n" if native else "")  # Hermes templates put the JSON on its own line
    return opening + (f'{{"name": {json.dumps(name)}, "arguments": ' if mode == "named" else "")


def tools_block(tools: Sequence[dict[str, Any]]) -> str:
    """strop's system-prompt text announcing the tools."""
    listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one of these functions. Their JSON schemas:\n<tools>\n"
        f"{listing}\n</tools>\n\n"
        f'To call a tool, answer with {TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{TOOL_CALL_CLOSE}'
    )


def _arguments(text: str) -> Any:
    """Arguments as an object where they parse (templates and the strop format show JSON, not a string of it)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def call_text(name: str, arguments: str) -> str:
    """One call in strop's format, spaced as `json.dumps` writes it (what a named prefill starts)."""
    body = json.dumps({"name": name, "arguments": _arguments(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _plain(m: Message) -> dict[str, Any]:
    return {"role": m.role, "content": m.content}


def _native(m: Message) -> dict[str, Any]:
    """The OpenAI-shaped message for a template that renders tools, arguments as objects (as vLLM passes them)."""
    out = _plain(m)
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None and m.role == "tool":
        out["name"] = m.name
    return out


def _strop_format(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if out and out[-1].get("_tool"):  # one user turn for consecutive results keeps roles alternating
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        elif m.tool_calls:
            calls = "\n".join(call_text(c.function.name, c.function.arguments) for c in m.tool_calls)
            out.append({"role": m.role, "content": f"{m.content}\n{calls}" if m.content else calls})
        else:
            out.append(_plain(m))
    for d in out:
        d.pop("_tool", None)
    return out


def template_messages(
    tokenizer: Any,
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: Any,
    *,
    announce: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages for `apply_chat_template` and its extra keyword arguments (`tools=` for native templates).

    announce=False leaves the tools out of the system prompt (a continuation: they are in the earlier ids).
    Without tools or tool messages the messages are plain role/content dicts, exactly as before tools existed.
    """
    active = tool_mode(tools, tool_choice)[0] != "off"
    has_tool_turns = any(m.role == "tool" or m.tool_calls for m in messages)
    if not active and not has_tool_turns:
        return [_plain(m) for m in messages], {}
    if renders_tools(tokenizer):
        return [_native(m) for m in messages], ({"tools": list(tools or [])} if active else {})
    out = _strop_format(messages)
    if active and announce:
        block = tools_block(tools or [])
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, {}


def render_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    continue_final: bool = False,
) -> str:
    """The prompt text of a chat request: the chat template over the messages, then any forced-call prefill."""
    dicts, extra = template_messages(tokenizer, messages, tools, tool_choice)
    text = tokenizer.apply_chat_template(
        dicts,
        tokenize=False,
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
        **extra,
    )
    return str(text) + ("" if continue_final else call_prefix(tokenizer, tools, tool_choice))


# --------------------------------------------------------------------------------------------- parsing
@dataclass
class ParsedReply:
    """What a generated reply says: its text content and at most one tool call (OpenAI shape).

    invalid: the reply tried to call a tool (it holds the `<tool_call>` marker or was prefilled with it) but the
    call did not parse, named an unknown tool, or its arguments were not a JSON object; its text is `content`.
    """

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid: bool = False


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _read_call(obj: Any, names: list[str], forced: str) -> dict[str, Any] | None:
    """The call an object describes, or None when it is not a call of an allowed tool with object arguments."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if obj["name"] not in names or (forced and obj["name"] != forced):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string, as the API returns them
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return _call(obj["name"], args) if isinstance(args, dict) else None


def parse_tool_calls(
    text: str,
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    prefix: str = "",
) -> ParsedReply:
    """Read a reply generated after `prefix` (the forced-call prefill, see `call_prefix`). Never raises for what
    the model wrote: text that is not a valid call comes back as content. A second call in one reply is dropped
    (strop returns at most one call per turn).
    """
    mode, forced = tool_mode(tools, tool_choice)
    full = prefix + text
    if mode == "off":
        return ParsedReply(content=full)
    names = tool_names(tools)
    start = full.find(TOOL_CALL_OPEN)
    if start < 0:
        # A whole reply that is a call object: templates such as Llama 3.1's ask for bare JSON.
        try:
            call = _read_call(json.loads(full), names, forced)
        except ValueError:
            call = None
        return ParsedReply(content=None, tool_calls=[call]) if call else ParsedReply(content=full)
    before = full[:start].strip()
    body = full[start + len(TOOL_CALL_OPEN) :]
    for end_marker in (TOOL_CALL_CLOSE, TOOL_CALL_OPEN):  # the block ends at its close tag or the next call
        cut = body.find(end_marker)
        if cut >= 0:
            body = body[:cut]
    body = body.strip()
    try:
        obj, end = json.JSONDecoder().raw_decode(body)
    except ValueError:  # not JSON: returned as content, marked invalid
        obj, end = None, 0
    call = _read_call(obj, names, forced) if not body[end:].strip() else None
    if call is None:
        return ParsedReply(content=full, invalid=True)
    return ParsedReply(content=before or None, tool_calls=[call])
