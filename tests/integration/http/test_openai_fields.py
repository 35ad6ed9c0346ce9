"""Every field of OpenAI's chat-completions request, and vLLM's own, against each kind of
model server (LLM_MODEL_SERVER): what the server received and under which name, or the 422
naming the field and the server (the capability table, upstream/params.py). Then the
answers beyond plain text, as vLLM sends them, through the service whole and streamed: tool
calls split across chunks, reasoning deltas, two choices, logprobs. All against the fake
model server on real sockets; docs/capabilities.md points at these tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from tests.support.fake_openai import (
    FakeOpenAI,
    Script,
    logprob_entry,
    vllm_logprob_chunks,
    vllm_n_chunks,
    vllm_reasoning_chunks,
    vllm_tool_call_chunks,
)
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import Frame, content_of, parse_frames

KINDS = ("vllm", "ray", "tgi", "llamacpp", "openai")
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                         "parameters": SCHEMA}}  # fmt: skip
FORCED = {"type": "function", "function": {"name": "get_weather"}}

ALL = frozenset(KINDS)
VLLM = frozenset({"vllm", "ray"})  # Ray Serve LLM takes vLLM's request


def refused_except(*kinds: str) -> dict[str, Any]:
    return {kind: None for kind in ALL - set(kinds)}


def left_out_except(*kinds: str) -> dict[str, Any]:
    return {kind: {} for kind in ALL - set(kinds)}


# field, value, {kind: what the server receives (wire name -> value), None: refused}.
# A kind missing from the map receives the field under its own name, value unchanged.
CASES: list[tuple[str, Any, dict[str, dict[str, Any] | None]]] = [
    ("temperature", 0.3, {}),
    ("top_p", 0.5, {}),
    ("seed", 7, {}),
    ("stop", "END", {kind: {"stop": ["END"]} for kind in KINDS}),
    ("max_tokens", 9, {}),
    ("max_completion_tokens", 9, {"tgi": {"max_tokens": 9}, "llamacpp": {"max_tokens": 9}}),
    ("frequency_penalty", 0.5, {}),
    ("presence_penalty", 0.5, {}),
    # llama.cpp returns no logprobs without top_logprobs: 0 goes along
    ("logprobs", True, {"llamacpp": {"logprobs": True, "top_logprobs": 0}}),
    ("top_logprobs", 2, {}),
    ("tools", [TOOL], {}),
    ("tool_choice", "required", {}),
    ("logit_bias", {"50256": -100}, {"tgi": None}),
    ("n", 2, {"tgi": None, "llamacpp": None}),
    ("parallel_tool_calls", False, {"tgi": None, "llamacpp": None}),
    ("user", "user-42", {"tgi": None}),
    ("reasoning_effort", "low", {"tgi": None, "llamacpp": None}),
    ("functions", [TOOL["function"]], refused_except("llamacpp", "openai")),
    ("function_call", "auto", refused_except("llamacpp", "openai")),
    # response_format: as it is, or translated to what the server reads
    ("response_format", {"type": "json_schema",
                         "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
     {"tgi": {"response_format": {"type": "json", "value": SCHEMA}},
      "llamacpp": {"response_format": {"type": "json_object", "schema": SCHEMA}}}),
    ("response_format", {"type": "json_object"},
     {"tgi": {"response_format": {"type": "json", "value": {"type": "object"}}}}),
    ("response_format", {"type": "text"}, {"tgi": {}}),
    # OpenAI's platform fields: only OpenAI (or a server that is OpenAI-compatible)
    ("store", True, refused_except("openai")),
    ("metadata", {"team": "search"}, refused_except("openai")),
    ("service_tier", "flex", refused_except("openai")),
    ("modalities", ["text", "audio"], refused_except("openai")),
    ("audio", {"voice": "alloy", "format": "wav"}, refused_except("openai")),
    ("prediction", {"type": "content", "content": "x"}, refused_except("openai")),
    ("prompt_cache_key", "k1", refused_except("openai")),
    ("prompt_cache_retention", "24h", refused_except("openai")),
    ("safety_identifier", "h-1", refused_except("openai")),
    ("verbosity", "low", refused_except("openai")),
    ("web_search_options", {"search_context_size": "low"}, refused_except("openai")),
    # the seed's knobs: sent where taken, left out elsewhere as the seed did (OPEA pipelines
    # send them with every request)
    ("top_k", 10, left_out_except("vllm", "ray", "llamacpp")),
    ("typical_p", 0.9, left_out_except("llamacpp")),
    ("repetition_penalty", 1.1,
     {**left_out_except("vllm", "ray", "llamacpp"), "llamacpp": {"repeat_penalty": 1.1}}),
    # vLLM's own fields: vLLM and Ray only (llama.cpp has min_p and min_tokens too)
    ("guided_json", SCHEMA, refused_except(*VLLM)),
    ("guided_regex", "[a-z]+", refused_except(*VLLM)),
    ("guided_choice", ["yes", "no"], refused_except(*VLLM)),
    ("guided_grammar", "root ::= 'a'", refused_except(*VLLM)),
    ("structured_outputs", {"choice": ["yes", "no"]}, refused_except(*VLLM)),
    ("chat_template", "{{ messages }}", refused_except(*VLLM)),
    ("chat_template_kwargs", {"enable_thinking": False}, refused_except(*VLLM)),
    ("add_generation_prompt", False, refused_except(*VLLM)),
    ("continue_final_message", True, refused_except(*VLLM)),
    ("priority", 3, refused_except(*VLLM)),
    ("min_tokens", 2, refused_except(*VLLM, "llamacpp")),
    ("min_p", 0.1, refused_except(*VLLM, "llamacpp")),
    ("ignore_eos", True, refused_except(*VLLM)),
    ("skip_special_tokens", False, refused_except(*VLLM)),
    ("spaces_between_special_tokens", False, refused_except(*VLLM)),
    ("include_stop_str_in_output", True, refused_except(*VLLM)),
    ("length_penalty", 0.8, refused_except(*VLLM)),
    ("stop_token_ids", [2], refused_except(*VLLM)),
    ("bad_words", ["bad"], refused_except(*VLLM)),
    ("return_tokens_as_token_ids", True, refused_except(*VLLM)),
    ("documents", [{"title": "t", "text": "Paris is sunny."}], refused_except(*VLLM)),
    ("mm_processor_kwargs", {"num_crops": 4}, refused_except(*VLLM)),
    ("request_id", "req-1", refused_except(*VLLM)),
    ("use_beam_search", True, refused_except(*VLLM)),
    ("best_of", 2, refused_except(*VLLM)),
    ("truncate_prompt_tokens", 100, refused_except(*VLLM)),
    ("truncation_side", "left", refused_except(*VLLM)),
    ("prompt_logprobs", 1, refused_except(*VLLM)),
    ("logprob_token_ids", [1, 2], refused_except(*VLLM)),
    ("allowed_token_ids", [1, 2, 3], refused_except(*VLLM)),
    ("watermarking", True, refused_except(*VLLM)),
    ("thinking_token_budget", 64, refused_except(*VLLM)),
    ("include_reasoning", False, refused_except(*VLLM)),
    ("repetition_detection", {"max_pattern_size": 8}, refused_except(*VLLM)),
    ("echo", True, refused_except(*VLLM)),
    ("add_special_tokens", True, refused_except(*VLLM)),
    ("media_io_kwargs", {"video": {"num_frames": 8}}, refused_except(*VLLM)),
    ("structural_tag", '{"structures": []}', refused_except(*VLLM)),
    ("guided_decoding_backend", "xgrammar", refused_except(*VLLM)),
    ("guided_whitespace_pattern", " ", refused_except(*VLLM)),
    ("session_id", "s-1", refused_except(*VLLM)),
    ("logits_processors", ["my.Processor"], refused_except(*VLLM)),
    ("return_token_ids", True, refused_except(*VLLM)),
    ("return_prompt_text", True, refused_except(*VLLM)),
    ("cache_salt", "salt-0123456789", refused_except(*VLLM)),
    ("kv_transfer_params", {"do_remote_decode": True}, refused_except(*VLLM)),
    ("ec_transfer_params", {"x": 1}, refused_except(*VLLM)),
    ("vllm_xargs", {"my_arg": 1}, refused_except(*VLLM)),
    ("stream_interval", 4, refused_except(*VLLM)),
    ("prompt_cache_options", {"mode": "explicit"}, refused_except("openai")),
    ("moderation", {"policy": "default"}, refused_except("openai")),
]  # fmt: skip


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def services(fake_server: FakeServer) -> Iterator[dict[str, ServiceServer]]:
    """One service per kind of model server, all in front of the same fake."""
    out = {
        kind: ServiceServer(settings_for(fake_server.url, model_server=kind, startup_wait=0))
        for kind in KINDS
    }
    yield out
    for service in out.values():
        service.close()


@pytest.fixture
def fake(fake_server: FakeServer) -> FakeOpenAI:
    fake_server.fake.reset()
    return fake_server.fake


def post(service: ServiceServer, **body: Any) -> httpx.Response:
    body.setdefault("messages", USER)
    return httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)


def expected(field: str, value: Any, per_kind: dict[str, Any], kind: str) -> Any:
    return per_kind.get(kind, {field: value})


def case_id(case: tuple[str, Any, Any]) -> str:
    field, value, _ = case
    return f"{field}-{value['type']}" if field == "response_format" else field


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("field", "value", "per_kind"), CASES, ids=[case_id(c) for c in CASES])
def test_field_reaches_the_server_under_its_name_or_is_refused(
    services: dict[str, ServiceServer],
    fake: FakeOpenAI,
    kind: str,
    field: str,
    value: Any,
    per_kind: dict[str, Any],
) -> None:
    want = expected(field, value, per_kind, kind)
    extra: dict[str, Any] = {"tools": [TOOL]} if field == "tool_choice" else {}
    extra |= {"logprobs": True} if field == "top_logprobs" else {}
    for stream in (False, True):
        resp = post(services[kind], stream=stream, **extra, **{field: value})
        if want is None:
            assert resp.status_code == 422, resp.text
            error = resp.json()["error"]
            assert error["param"] == field
            assert error["message"] == (
                f"{field}: not supported by {kind} model servers (LLM_MODEL_SERVER={kind})"
            )
            continue
        assert resp.status_code == 200, resp.text
        sent = fake.requests[-1]
        for name, sent_value in want.items():
            assert sent[name] == sent_value, (name, sent)
        if field == "max_completion_tokens" and "max_completion_tokens" in want:
            assert "max_tokens" not in sent  # one limit, under the name it came with
        if not want:  # translated into nothing: the server's default is the same
            assert field not in sent
    if want is None:
        assert fake.requests == []


@pytest.mark.parametrize("kind", ("tgi", "llamacpp"))
def test_values_that_ask_for_nothing_are_not_refused(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str
) -> None:
    # A pipeline that sends a whole parameter object with OpenAI's defaults filled in.
    neutral = {"n": 1, "logprobs": False, "parallel_tool_calls": True, "logit_bias": {},
               "store": False, "metadata": {}, "documents": [], "priority": 0}  # fmt: skip
    resp = post(services[kind], stream=False, **neutral)
    assert resp.status_code == 200, resp.text
    sent = fake.requests[-1]
    unsupported = {"n", "parallel_tool_calls", "store", "metadata", "documents", "priority"}
    if kind == "tgi":
        unsupported.add("logit_bias")
    assert not unsupported & set(sent)


def test_several_refusals_name_every_field(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    resp = post(services["tgi"], n=3, logit_bias={"1": 1}, guided_regex="a+")
    error = resp.json()["error"]
    assert resp.status_code == 422 and error["param"] == "logit_bias"
    assert error["message"].count("not supported by tgi model servers") == 3
    assert "guided_regex: not supported by tgi" in error["message"]


# --- messages --------------------------------------------------------------------------

PARTS = [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this."}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
FILE = {"type": "file", "file": {"file_id": "file-1"}}
VIDEO = {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}
AUDIO_URL = {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}}


@pytest.mark.parametrize("kind", KINDS)
def test_developer_role_is_system_where_the_server_has_none(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str
) -> None:
    messages = [{"role": "developer", "content": "Answer in French."}, *USER]
    assert post(services[kind], messages=messages).status_code == 200
    role = fake.requests[-1]["messages"][0]["role"]
    assert role == ("developer" if kind == "openai" else "system")


@pytest.mark.parametrize("kind", KINDS)
def test_text_parts_are_joined_where_templates_need_a_string(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str
) -> None:
    messages = [{"role": "system", "content": PARTS}, {"role": "user", "content": PARTS}]
    assert post(services[kind], messages=messages).status_code == 200
    sent = fake.requests[-1]["messages"]
    if kind == "llamacpp":
        assert sent[0]["content"] == sent[1]["content"] == "Describe\nthis."
    else:
        assert sent[0]["content"] == sent[1]["content"] == PARTS


PART_SUPPORT = {
    "image_url": ALL,
    "input_audio": frozenset({"vllm", "ray", "openai"}),
    "file": frozenset({"openai"}),
    "video_url": VLLM,
    "audio_url": VLLM,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("part", (IMAGE, AUDIO, FILE, VIDEO, AUDIO_URL), ids=lambda p: p["type"])
def test_media_parts_pass_as_a_list_or_are_refused(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str, part: dict[str, Any]
) -> None:
    content = [{"type": "text", "text": "What is this?"}, part]
    resp = post(services[kind], messages=[{"role": "user", "content": content}])
    if kind in PART_SUPPORT[part["type"]]:
        assert resp.status_code == 200, resp.text
        assert fake.requests[-1]["messages"][0]["content"] == content
    else:
        assert resp.status_code == 422
        error = resp.json()["error"]
        assert error["param"] == "messages.0.content.1"
        assert error["message"] == (
            f"messages.0.content.1: {part['type']} parts: not supported by {kind} model "
            f"servers (LLM_MODEL_SERVER={kind})"
        )


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_tool_conversation_history_reaches_the_server(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str
) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    assert post(services[kind], messages=messages, tools=[TOOL]).status_code == 200
    sent = fake.requests[-1]["messages"]
    assert sent[1]["tool_calls"] == [CALL]
    # llama.cpp's server refuses a null content: it gets an empty one.
    assert sent[1]["content"] == ("" if kind == "llamacpp" else None)
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}


def test_assistant_message_keeps_name_and_refusal(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    messages = [{"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}],
                 "refusal": "No."}, *USER]  # fmt: skip
    assert post(services["vllm"], messages=messages).status_code == 200
    sent = fake.requests[-1]["messages"]
    assert sent[0]["name"] == "ann"
    assert sent[1] == messages[1]


@pytest.mark.parametrize(("kind", "status"), [("tgi", 422), ("vllm", 200), ("llamacpp", 200)])
def test_legacy_function_role(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str, status: int
) -> None:
    messages = [*USER, {"role": "function", "name": "get_weather", "content": "18 C"}]
    resp = post(services[kind], messages=messages)
    assert resp.status_code == status
    if status == 422:
        assert resp.json()["error"]["param"] == "messages.1.role"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "system", "content": [IMAGE]}, "messages.0.content"),
        ({"role": "user"}, "messages.0.content"),
        ({"role": "user", "content": [{"type": "image_url"}]}, "messages.0.content.0.image_url"),
        ({"role": "user", "content": [{"type": "video", "x": 1}]}, "messages.0.content.0"),
        ({"role": "assistant", "tool_calls": [{"type": "function"}]},
         "messages.0.tool_calls.0.id"),
    ],
)  # fmt: skip
def test_malformed_messages_are_422(
    services: dict[str, ServiceServer], fake: FakeOpenAI, message: dict[str, Any], param: str
) -> None:
    resp = post(services["openai"], messages=[message])
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == param
    assert fake.requests == []


# --- unknown fields ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ("vllm", "openai"))
def test_unknown_field_is_422_naming_it(
    services: dict[str, ServiceServer], fake: FakeOpenAI, kind: str
) -> None:
    resp = post(services[kind], foo=1)
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["message"] == "Unrecognized request argument supplied: foo"
    assert error["param"] == "foo" and error["type"] == "invalid_request_error"
    resp = post(services[kind], foo=1, bar=2)
    assert resp.json()["error"]["message"] == "Unrecognized request arguments supplied: foo, bar"
    resp = post(services[kind], messages=[{"role": "user", "content": "Hi", "colour": "red"}])
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "messages.0.colour"
    assert fake.requests == []


def test_unknown_fields_ignored_when_the_setting_says_so(fake_server: FakeServer) -> None:
    fake_server.fake.reset()
    settings = settings_for(
        fake_server.url, model_server="vllm", startup_wait=0, ignore_unknown_fields=True
    )
    service = ServiceServer(settings)
    try:
        messages = [{"role": "user", "content": "Hi", "colour": "red"}]
        resp = post(service, messages=messages, foo=1, guided_regex="a+", stream=False)
        assert resp.status_code == 200, resp.text
        sent = fake_server.fake.requests[-1]
        assert "foo" not in sent and "colour" not in sent["messages"][0]
        assert sent["guided_regex"] == "a+"  # a known (vLLM) field still goes
        resp = post(service, logit_bias={"1": 1}, n=0)  # known fields are still checked
        assert resp.status_code == 422
    finally:
        service.close()


# --- OPEA's LLMParamsDoc fields ------------------------------------------------------------


def test_opea_fields(services: dict[str, ServiceServer], fake: FakeOpenAI) -> None:
    service = services["tgi"]
    body: dict[str, Any] = {"query": "What is deep learning?", "streaming": False,
                            "language": "auto", "input_guardrail_params": None, "id": "doc-1",
                            "documents": [], "chat_template": None}  # fmt: skip
    resp = httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["prompt"] == "What is deep learning?"
    assert fake.requests[-1]["messages"] == [{"role": "user", "content": "What is deep learning?"}]
    for bad, param in (({"language": "zh"}, "language"), ({"streaming": True}, "streaming"),
                       ({"messages": USER}, "query")):  # fmt: skip
        resp = httpx.post(
            f"{service.url}/v1/chat/completions", json={**body, "stream": False, **bad}, timeout=30
        )
        assert resp.status_code == 422 and resp.json()["error"]["param"] == param


def test_limit_synonyms_must_agree(services: dict[str, ServiceServer], fake: FakeOpenAI) -> None:
    resp = post(services["vllm"], max_tokens=5, max_completion_tokens=6)
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "max_completion_tokens"
    resp = post(services["vllm"], max_completion_tokens=10**9)
    assert resp.status_code == 422 and "above the limit" in resp.json()["error"]["message"]


# --- answers beyond text, whole and streamed (the fake plays vLLM) ------------------------


def chunks_of(frames: list[Frame]) -> list[dict[str, Any]]:
    return [f.json() for f in frames if f.field == "data" and f.event is None and f.raw != "[DONE]"]


def merged_tool_calls(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Tool-call deltas merged as OpenAI's clients merge them (by index)."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(delta["index"], {"function": {"arguments": ""}})
                for key in ("id", "type"):
                    if delta.get(key):
                        call[key] = delta[key]
                function = delta.get("function") or {}
                if function.get("name"):
                    call["function"]["name"] = function["name"]
                call["function"]["arguments"] += function.get("arguments") or ""
    return calls


def test_streamed_tool_call_is_relayed_in_openai_shape(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    fake.push(Script(chunks=vllm_tool_call_chunks("get_weather", ['{"city', '": "Pa', 'ris"}'])))
    resp = post(services["vllm"], stream=True, tools=[TOOL], tool_choice=FORCED)
    chunks = chunks_of(parse_frames(resp.text))
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")  # ours, not the server's
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake-model"
               for c in chunks)  # fmt: skip
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    first = chunks[1]["choices"][0]
    start = {"id": "chatcmpl-tool-7f3a", "type": "function", "index": 0,
             "function": {"name": "get_weather"}}  # fmt: skip
    assert first["delta"]["tool_calls"][0] == start
    assert first["finish_reason"] is None
    call = merged_tool_calls(chunks)[0]
    assert call["id"] == "chatcmpl-tool-7f3a" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"] == [
        {"index": 0, "delta": {"content": ""}, "finish_reason": "tool_calls"}
    ]
    assert fake.requests[-1]["tool_choice"] == FORCED


def llamacpp_tool_chunks(pieces: list[str]) -> list[dict[str, Any]]:
    """A forced tool call as llama.cpp's server (llama-cpp-python) streams it: the name and
    id again in every delta, the legacy function_call beside tool_calls, nulls for the rest."""
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "finish_reason": None, "logprobs": None,
                      "delta": {"role": "assistant", "content": None, "function_call": None,
                                "tool_calls": None}}]}
    ]  # fmt: skip
    for piece in pieces:
        function = {"name": "get_weather", "arguments": piece}
        delta = {"role": None, "content": None, "function_call": function,
                 "tool_calls": [{"index": 0, "id": "call__0_get_weather", "type": "function",
                                 "function": function}]}  # fmt: skip
        chunks.append({"choices": [{"index": 0, "finish_reason": None, "logprobs": None,
                                    "delta": delta}]})  # fmt: skip
    chunks.append({"choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                                "delta": {"role": None, "content": None, "function_call": None,
                                          "tool_calls": None}}]})  # fmt: skip
    return chunks


def test_llamacpp_tool_deltas_become_openai_deltas(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    fake.push(Script(chunks=llamacpp_tool_chunks(["{", '"city": ', '"Paris"', "}"])))
    resp = post(services["llamacpp"], stream=True, tools=[TOOL], tool_choice=FORCED)
    chunks = chunks_of(parse_frames(resp.text))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    start = {"index": 0, "id": "call__0_get_weather", "type": "function",
             "function": {"name": "get_weather", "arguments": "{"}}  # fmt: skip
    assert deltas[0] == {"tool_calls": [start]}
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:]]
    assert deltas[1:] == [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                          for piece in pieces]  # fmt: skip
    call = merged_tool_calls(chunks)[0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_whole_tool_call_answer_is_passed_on(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [CALL],
               "reasoning_content": "The user wants weather."}  # fmt: skip
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls",
              "stop_reason": None}  # fmt: skip
    fake.push(Script(choices=[choice], reply_extra={"system_fingerprint": "fp-1"}))
    doc = post(services["vllm"], stream=False, tools=[TOOL]).json()
    assert doc["choices"] == [choice]
    assert doc["text"] == "" and doc["system_fingerprint"] == "fp-1"
    assert doc["object"] == "chat.completion" and doc["prompt"] == USER[0]["content"]


@pytest.mark.parametrize("key", ("reasoning_content", "reasoning"))
def test_reasoning_deltas_are_relayed(
    services: dict[str, ServiceServer], fake: FakeOpenAI, key: str
) -> None:
    fake.push(Script(chunks=vllm_reasoning_chunks(["Think", "ing."], ["Sunny", "."], key=key)))
    frames = parse_frames(post(services["vllm"], stream=True).text)
    chunks = chunks_of(frames)
    reasoning = [c["choices"][0]["delta"][key] for c in chunks if key in c["choices"][0]["delta"]]
    assert reasoning == ["Think", "ing."]
    assert content_of(frames) == "Sunny."
    # content chunks stay on the hot path: exactly the plain content shape
    plain = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert all(c["choices"] == [{"index": 0, "delta": {"content": c["choices"][0]["delta"]
                                                       ["content"]}, "finish_reason": None}]
               for c in plain)  # fmt: skip


def test_two_choices_stream_with_a_finish_chunk_each(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    fake.push(Script(chunks=vllm_n_chunks([["Sun", "ny"], ["Rain", "y", "!"]], ["stop", "length"])))
    resp = post(services["vllm"], stream=True, n=2, stream_options={"include_usage": True})
    frames = parse_frames(resp.text)
    chunks = chunks_of(frames)
    text: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            text[choice["index"]] += choice["delta"].get("content") or ""
    assert text == {0: "Sunny", 1: "Rainy!"}
    finishes = [(c["index"], c["finish_reason"]) for chunk in chunks for c in chunk["choices"]
                if c["finish_reason"]]  # fmt: skip
    assert finishes == [(0, "stop"), (1, "length")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert fake.requests[-1]["n"] == 2


def test_two_choices_whole(services: dict[str, ServiceServer], fake: FakeOpenAI) -> None:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                "finish_reason": "stop"} for i, t in enumerate(("Sunny", "Rainy"))]  # fmt: skip
    fake.push(Script(choices=choices))
    doc = post(services["vllm"], stream=False, n=2).json()
    assert doc["choices"] == choices and doc["text"] == "Sunny"


def test_logprobs_are_relayed(services: dict[str, ServiceServer], fake: FakeOpenAI) -> None:
    tokens = [("Sun", -0.1), ("ny", -0.5)]
    fake.push(Script(chunks=vllm_logprob_chunks(tokens)))
    frames = parse_frames(post(services["vllm"], stream=True, logprobs=True, top_logprobs=1).text)
    chunks = chunks_of(frames)
    got = [c["choices"][0]["logprobs"]["content"][0] for c in chunks if c["choices"][0]
           .get("logprobs")]  # fmt: skip
    assert got == [logprob_entry(t, lp) for t, lp in tokens]
    assert content_of(frames) == "Sunny"
    whole = {"index": 0, "message": {"role": "assistant", "content": "Sunny"},
             "logprobs": {"content": [logprob_entry(t, lp) for t, lp in tokens]},
             "finish_reason": "stop"}  # fmt: skip
    fake.push(Script(choices=[whole]))
    assert post(services["vllm"], stream=False, logprobs=True).json()["choices"] == [whole]


# --- the official openai SDK against the service ---------------------------------------


class City(BaseModel):
    city: str


def test_openai_sdk_parse_and_streamed_tool_call(
    services: dict[str, ServiceServer], fake: FakeOpenAI
) -> None:
    client = openai.OpenAI(base_url=f"{services['vllm'].url}/v1", api_key="unused")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": USER[0]["content"]}]
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    ]
    answer = {"index": 0, "message": {"role": "assistant", "content": '{"city": "Paris"}'},
              "logprobs": None, "finish_reason": "stop"}  # fmt: skip
    fake.push(Script(choices=[answer]))
    parsed = client.chat.completions.parse(
        model="fake-model", messages=messages, response_format=City
    )
    assert parsed.choices[0].message.parsed == City(city="Paris")
    sent = fake.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"

    fake.push(Script(chunks=vllm_tool_call_chunks("get_weather", ['{"city": ', '"Paris"}'])))
    with client.chat.completions.stream(
        model="fake-model",
        messages=messages,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"
    # a plain create(stream=True) sees the same chunks
    fake.push(Script(chunks=vllm_tool_call_chunks("get_weather", ['{"city": "Paris"}'])))
    chunks = list(
        client.chat.completions.create(
            model="fake-model", messages=messages, tools=tools, stream=True
        )
    )
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    assert any(d and d[0].function and d[0].function.name == "get_weather" for d in deltas)


# --- through the chain's model step (LLM_MODEL_CLIENT=chatopenai) -------------------------


def test_chain_route_refuses_what_it_cannot_relay(fake_server: FakeServer) -> None:
    fake_server.fake.reset()
    settings = settings_for(
        fake_server.url, model_server="vllm", startup_wait=0, model_client="chatopenai"
    )
    service = ServiceServer(settings)
    try:
        for field, value in (("tools", [TOOL]), ("n", 2), ("logprobs", True)):
            resp = post(service, **{field: value})
            assert resp.status_code == 422
            error = resp.json()["error"]
            assert error["param"] == field
            assert "not supported with the LangChain model step" in error["message"]
        assert fake_server.fake.requests == []
        # what only shapes the text goes through the chain as well
        resp = post(service, stream=True, frequency_penalty=0.5, guided_regex="[A-Z]+")
        assert resp.status_code == 200
        sent = fake_server.fake.requests[-1]
        assert sent["frequency_penalty"] == 0.5 and sent["guided_regex"] == "[A-Z]+"
    finally:
        service.close()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'"tools": [{"type": "function", "function": {"name": "f", "parameters": '
         b'{"maximum": 123456789012345678901234567890}}}]', "tools"),
        (b'"guided_json": {"type": "number", "maximum": NaN}', "guided_json.maximum"),
        (b'"priority": 123456789012345678901234567890', "priority"),
        (b'"min_p": NaN', "min_p"),
        (b'"messages": [{"role": "user", "content": [{"type": "image_url", '
         b'"image_url": {"url": "u", "w": Infinity}}]}]', "messages.0.content.0.image_url.w"),
    ],
)  # fmt: skip
def test_free_form_values_that_are_not_json_are_422(
    services: dict[str, ServiceServer], fake: FakeOpenAI, raw: bytes, param: str
) -> None:
    # Integers past 64 bits and NaN parse, but cannot be sent on as JSON: 422, not a 502.
    body = b'{"messages": [{"role": "user", "content": "Hi"}], ' + raw + b"}"
    if raw.startswith(b'"messages"'):
        body = b"{" + raw + b"}"
    resp = httpx.post(f"{services['vllm'].url}/v1/chat/completions", content=body,
                      headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == param
    assert fake.requests == []
