"""Tool calling in the OpenAI schema: rendering (a template that renders tools, and strop's own format), the
tool_choice variants, parsing what a model wrote, and `strop serve` through the official `openai` client.

A scripted engine answers with fixed text so a valid call, an invalid one and plain text are each certain; the
tiny model shows that a real engine serves requests with tools whatever it writes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from strop.agents.engines.base import (
    Completion,
    FinishReason,
    GenerationRequest,
    Message,
    continuation_ids,
    encode_prompt,
)
from strop.agents.engines.streaming import StreamEvent
from strop.agents.engines.tools import call_prefix, parse_tool_calls, render_chat
from strop.agents.models.tiny import CHAT_TEMPLATE as TINY_TEMPLATE
from tests.servers import ThreadServer

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
TOOLS = [ADD]
NAMED = {"type": "function", "function": {"name": "add"}}
# A Hermes-style template that renders tools itself, as Qwen2.5's does.
NATIVE_TEMPLATE = (
    "{%- if tools %}<|system|>\nTOOLS:{% for t in tools %}{{ t | tojson }}{% endfor %}\n{% endif -%}"
    "{%- for m in messages -%}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{%- if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}{% endif %}\n{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


def _tokenizer(template: str) -> Any:
    """A byte-level tokenizer with the given chat template (rendering does not need a trained vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["<tool_call>{}</tool_call>"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    fast.chat_template = template
    return fast


def _conversation() -> list[Message]:
    return [
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is 2 + 3?"),
        Message(
            role="assistant",
            content=None,
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        ),
        Message(role="tool", tool_call_id="call_1", content="5"),
    ]


# ------------------------------------------------------------------------------------------------ messages
def test_message_content_forms_and_plain_dump() -> None:
    assert Message(role="assistant", content=None).content == ""
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert Message(role="user", content=parts).content == "a\nb"
    with pytest.raises(ValidationError, match="image_url"):
        Message(role="user", content=[{"type": "image_url", "image_url": {"url": "x"}}])
    # plain messages keep dumping as TRL's conversational format
    assert Message(role="user", content="hi").model_dump() == {"role": "user", "content": "hi"}
    call = Message(role="assistant", tool_calls=[{"function": {"name": "add", "arguments": {"a": 1}}}])
    dumped = call.model_dump()
    assert dumped["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 1}'}
    assert dumped["tool_calls"][0]["id"].startswith("call_")


# ----------------------------------------------------------------------------------------------- rendering
def test_strop_format_for_a_template_without_tools() -> None:
    tok = _tokenizer(TINY_TEMPLATE)
    text = render_chat(tok, _conversation(), tools=TOOLS, tool_choice="auto")
    system, rest = text.split("<|user|>", 1)
    assert system.startswith("<|system|>\nBe brief.\n\n# Tools")
    assert json.dumps(ADD["function"]) in system
    assert 'To call a tool, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>' in system
    assert (
        '<|assistant|>\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|eos|>' in rest
    )
    assert rest.endswith("<|user|>\n<tool_response>\n5\n</tool_response>\n<|assistant|>\n")
    assert "<|tool|>" not in text  # the tool role becomes a user turn


def test_without_tools_the_prompt_is_what_it_always_was() -> None:
    tok = _tokenizer(TINY_TEMPLATE)
    msgs = [Message(role="user", content="What is 2 + 3?")]
    plain = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert render_chat(tok, msgs) == plain
    assert render_chat(tok, msgs, tools=TOOLS, tool_choice="none") == plain
    request = GenerationRequest(messages=msgs)
    assert encode_prompt(tok, request, "m") == tok(plain, add_special_tokens=False)["input_ids"]


def test_consecutive_tool_results_are_one_user_turn() -> None:
    tok = _tokenizer(TINY_TEMPLATE)
    msgs = [*_conversation(), Message(role="tool", tool_call_id="call_2", content="7")]
    text = render_chat(tok, msgs, tools=TOOLS)
    assert "<tool_response>\n5\n</tool_response>\n<tool_response>\n7\n</tool_response>\n<|assistant|>" in text


def test_a_template_that_renders_tools_gets_them_and_the_openai_messages() -> None:
    tok = _tokenizer(NATIVE_TEMPLATE)
    text = render_chat(tok, _conversation(), tools=TOOLS, tool_choice="auto")
    assert text.startswith("<|system|>\nTOOLS:") and '"name": "add"' in text.split("\n")[1]
    assert "# Tools" not in text  # strop's own block is not added
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in text
    assert "<|tool|>\n5" in text
    # a Hermes-style native template gets the Hermes prefill, its JSON on its own line
    assert call_prefix(tok, TOOLS, "required") == "<tool_call>\n"
    no_tags = _tokenizer(NATIVE_TEMPLATE.replace("<tool_call>", "[CALL]"))
    assert call_prefix(no_tags, TOOLS, "required") == ""


@pytest.mark.parametrize(
    ("choice", "announced", "ending"),
    [
        ("none", False, "<|assistant|>\n"),
        ("auto", True, "<|assistant|>\n"),
        (None, True, "<|assistant|>\n"),
        ("required", True, "<|assistant|>\n<tool_call>"),
        (NAMED, True, '<|assistant|>\n<tool_call>{"name": "add", "arguments": '),
    ],
)
def test_tool_choice_variants(choice: Any, announced: bool, ending: str) -> None:
    tok = _tokenizer(TINY_TEMPLATE)
    msgs = [Message(role="user", content="What is 2 + 3?")]
    request = GenerationRequest(messages=msgs, tools=TOOLS, tool_choice=choice)
    text = render_chat(tok, msgs, tools=TOOLS, tool_choice=choice)
    assert ("# Tools" in text) is announced
    assert text.endswith(ending)
    # the prefill is part of the prompt ids: only what the model samples after it takes loss
    assert encode_prompt(tok, request, "m") == tok(text, add_special_tokens=False)["input_ids"]


def test_bad_tool_choices_and_tools_are_refused_by_name() -> None:
    msgs = [Message(role="user", content="hi")]
    with pytest.raises(ValidationError, match="'sub', which is not in `tools`"):
        GenerationRequest(
            messages=msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "sub"}}
        )
    with pytest.raises(ValidationError, match="'required' needs `tools`"):
        GenerationRequest(messages=msgs, tool_choice="required")
    with pytest.raises(ValidationError, match="sometimes"):
        GenerationRequest(messages=msgs, tools=TOOLS, tool_choice="sometimes")
    with pytest.raises(ValidationError, match=r"tools\.0"):
        GenerationRequest(messages=msgs, tools=[{"type": "function", "function": {"description": "x"}}])
    with pytest.raises(ValidationError, match="continue_final"):
        GenerationRequest(messages=msgs, tools=TOOLS, tool_choice="required", continue_final=True)


def test_continuation_renders_tool_results_and_the_prefill() -> None:
    tok = _tokenizer(TINY_TEMPLATE)
    context = [5, 6, 7]
    new = [Message(role="tool", tool_call_id="call_1", content="5")]
    ids = continuation_ids(tok, context, new, tools=TOOLS, tool_choice="required")
    assert ids[:3] == context
    glue = tok.decode(ids[3:])
    assert glue == "<|eos|><|user|>\n<tool_response>\n5\n</tool_response>\n<|assistant|>\n<tool_call>"
    request = GenerationRequest(messages=new, context_token_ids=context, tools=TOOLS, tool_choice="required")
    assert encode_prompt(tok, request, "m") == ids


# ------------------------------------------------------------------------------------------------- parsing
def test_parse_a_valid_call() -> None:
    r = parse_tool_calls(
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', TOOLS, "auto"
    )
    assert r.content is None and not r.invalid
    [call] = r.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "add" and json.loads(call["function"]["arguments"]) == {"a": 2, "b": 3}
    # text before the call is content; no closing tag (the stop string ate it) still parses
    r = parse_tool_calls(
        'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}', TOOLS, None
    )
    assert r.content == "Let me add." and len(r.tool_calls) == 1


def test_parse_after_a_prefill() -> None:
    prefix = call_prefix(None, TOOLS, NAMED)
    r = parse_tool_calls('{"a": 2, "b": 3}}', TOOLS, NAMED, prefix)
    assert r.tool_calls and r.tool_calls[0]["function"]["name"] == "add"
    bad = parse_tool_calls("2 and 3", TOOLS, NAMED, prefix)
    assert bad.invalid and bad.content == prefix + "2 and 3" and not bad.tool_calls


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "mul", "arguments": {"a": 2}}</tool_call>',  # unknown tool
        '<tool_call>{"name": "add", "arguments": [2, 3]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "add", "arguments": {"a": 2}} and more</tool_call>',
        "<tool_call>",
    ],
)
def test_invalid_calls_come_back_as_content(text: str) -> None:
    r = parse_tool_calls(text, TOOLS, "auto")
    assert r.invalid and r.content == text and r.tool_calls == []


def test_plain_text_garbage_and_tools_off() -> None:
    for text in ("The answer is 5.", "}{ <tool", ""):
        r = parse_tool_calls(text, TOOLS, "auto")
        assert r.content == text and not r.tool_calls and not r.invalid
    call = '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    assert parse_tool_calls(call, TOOLS, "none").content == call
    assert parse_tool_calls(call, None, None).tool_calls == []
    # a whole reply that is a call object (templates that ask for bare JSON)
    assert parse_tool_calls('{"name": "add", "parameters": {"a": 1}}', TOOLS, "auto").tool_calls
    # two calls: the first is returned
    two = call + '<tool_call>{"name": "add", "arguments": {"a": 9}}</tool_call>'
    [only] = parse_tool_calls(two, TOOLS, "auto").tool_calls
    assert only["function"]["arguments"] == "{}"


# -------------------------------------------------------------------------------------------------- server
def _app(engine: Any) -> Any:
    from strop.agents.server import create_app

    return create_app(engine)


_Server = ThreadServer


class Scripted:
    """An engine that answers every request with the next scripted text, and remembers the requests."""

    model_version = "scripted"
    tokenizer = None

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.requests: list[GenerationRequest] = []

    def _completion(self, request: GenerationRequest) -> Completion:
        self.requests.append(request)
        text = self.replies.pop(0)
        return Completion(
            text=text,
            prompt_token_ids=[1, 2, 3],
            token_ids=list(range(10, 10 + len(text.split()))),
            logprobs=[-0.5] * len(text.split()),
            finish_reason=FinishReason.STOP,
            model_version=self.model_version,
        )

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        return [[self._completion(r)] for r in requests]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        c = self._completion(request)
        words = c.text.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield StreamEvent(
                index=0,
                model_version=self.model_version,
                text=word if i == 0 else " " + word,
                token_ids=[c.token_ids[i]] if i < len(c.token_ids) else [],
                logprobs=[-0.5] if i < len(c.token_ids) else [],
                completion=c if last else None,
            )

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, openai.OpenAI]]:
    engine = Scripted()
    server = _Server(_app(engine))
    yield engine, openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    server.stop()


CALL = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
ASK = [{"role": "user", "content": "What is 2 + 3?"}]


def test_a_valid_call_is_returned_as_tool_calls(scripted: tuple[Scripted, openai.OpenAI]) -> None:
    engine, client = scripted
    engine.replies = [CALL]
    r = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 2, "b": 3}
    assert choice.model_extra["invalid_tool_call"] is False
    sent = engine.requests[-1]
    assert sent.tools == TOOLS and sent.tool_choice is None
    assert "</tool_call>" in sent.sampling.stop  # one call per turn

    # the agent's next turn: its assistant call and the tool's result come back as messages
    engine.replies = ["The answer is 5."]
    follow = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ]
    r = client.chat.completions.create(model="scripted", messages=follow, tools=TOOLS)
    assert r.choices[0].message.content == "The answer is 5." and r.choices[0].finish_reason == "stop"
    got = engine.requests[-1].messages or []
    assert got[1].tool_calls and got[1].tool_calls[0].id == call.id and got[2].tool_call_id == call.id


def test_invalid_text_is_content_not_an_error(scripted: tuple[Scripted, openai.OpenAI]) -> None:
    engine, client = scripted
    engine.replies = ['<tool_call>{"name": "mul"}</tool_call>']
    r = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, tool_choice="auto")
    assert r.choices[0].message.content == '<tool_call>{"name": "mul"}</tool_call>'
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].model_extra["invalid_tool_call"] is True


def test_a_streamed_call_in_openai_chunks(scripted: tuple[Scripted, openai.OpenAI]) -> None:
    engine, client = scripted
    engine.replies = ["Adding. " + CALL]
    chunks = list(client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id and calls[0].function.name == "add"
    assert "".join(d.content or "" for d in deltas) == "Adding."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    # the official stream helper accumulates it into a normal completion
    engine.replies = [CALL]
    with client.chat.completions.stream(model="scripted", messages=ASK, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"a": 2, "b": 3}

    # plain text with tools on: one content chunk
    engine.replies = ["just text"]
    chunks = list(client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "just text"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_langchain_chat_openai_binds_tools(scripted: tuple[Scripted, openai.OpenAI]) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    engine, client = scripted
    model = langchain_openai.ChatOpenAI(model="scripted", base_url=str(client.base_url), api_key="unused")
    bound = model.bind_tools(TOOLS)
    engine.replies = [CALL]
    msg = bound.invoke("What is 2 + 3?")
    assert msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 2, "b": 3}
    engine.replies = [CALL]
    chunks = list(bound.stream("What is 2 + 3?"))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.tool_calls[0]["args"] == {"a": 2, "b": 3}


@pytest.mark.parametrize(
    ("params", "param", "words"),
    [
        ({"tools": TOOLS, "parallel_tool_calls": True}, "parallel_tool_calls", "one tool call"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "mul"}}},
            "tool_choice",
            "'mul'",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0", "bad name!"),
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        ({"functions": [ADD["function"]]}, "functions", "send `tools`"),
    ],
)
def test_refused_tool_parameters_name_themselves(
    scripted: tuple[Scripted, openai.OpenAI], params: dict[str, Any], param: str, words: str
) -> None:
    _, client = scripted
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="scripted", messages=ASK, **params)
    assert err.value.param == param and words in err.value.message
    scripted[0].replies = ["ok"]
    r = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, parallel_tool_calls=False)
    assert r.choices[0].message.content == "ok"


# ------------------------------------------------------------------------------------------ the tiny model
@pytest.fixture(scope="module")
def tiny_client(tiny_model_path: Path) -> Iterator[openai.OpenAI]:
    from strop.agents.engines.hf import HFEngine

    server = _Server(_app(HFEngine(tiny_model_path, model_version="tiny")))
    yield openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    server.stop()


@pytest.mark.parametrize("choice", ["auto", "required", NAMED])
def test_the_tiny_model_serves_requests_with_tools(tiny_client: openai.OpenAI, choice: Any) -> None:
    r = tiny_client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=24, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    if c.finish_reason == "tool_calls":
        assert json.loads((c.message.tool_calls or [])[0].function.arguments) is not None
    elif choice != "auto":  # forced: what it wrote after the prefill, prefill included, as content
        assert (c.message.content or "").startswith("<tool_call>")
    prompt = r.model_extra["prompt_token_ids"]
    streamed = list(
        tiny_client.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=24,
            temperature=0,
            stream=True,
        )
    )
    ids = [t for ch in streamed for choice_ in ch.choices for t in choice_.model_extra.get("token_ids") or []]
    assert ids == c.model_extra["token_ids"] and prompt
