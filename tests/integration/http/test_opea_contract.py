"""The OPEA contract exactly: what the reference LLM microservice (Enterprise RAG 2.1) does
with ``data``, reranked documents, ``streaming`` and omitted sampling parameters, against the
service in front of the fake model server playing vLLM. docs/compatibility.md lists each
behaviour with the test here that proves it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.seed import DOCS
from tests.support.servers import FakeServer, ServiceServer, settings_for
from tests.support.sse import Frame, content_of, parse_frames

# The reference README's example bodies, verbatim.
README_SYSTEM = (
    "### You are a helpful, respectful, and honest assistant to help the user with questions. "
    "Please refer to the search results obtained from the local knowledge base. Refer also to "
    "the conversation history if you think it is relevant to the current question. Ignore all "
    "information that you think is not relevant to the question. If you dont know the answer "
    "to a question, please dont share false information. ### Search results:  \n\n"
)
README_NON_STREAM = """{
                "messages": [
                      {
                        "role": "system",
                        "content": "### You are a helpful, respectful, and honest assistant to help the user with questions. Please refer to the search results obtained from the local knowledge base. Refer also to the conversation history if you think it is relevant to the current question. Ignore all information that you think is not relevant to the question. If you dont know the answer to a question, please dont share false information. ### Search results:  \\n\\n"
                      },
                      {
                        "role": "user",
                        "content": "### Question: What is Deep Learning? \\n\\n"
                      }
                    ],
                "max_new_tokens":32,
                "top_p":0.95,
                "temperature":0.01,
                "stream":false
            }"""  # noqa: E501
README_STREAM = README_NON_STREAM.replace('"stream":false', '"stream":true')

# What the README's "Example Output with additional Data" shows of each document.
README_DOC_OUT = {"url": "https://example.com", "citation_id": 1, "vector_distance": 0.23,
                  "reranker_score": 0.83}  # fmt: skip

LINK = {"text": "Deep learning is...", "metadata": {**README_DOC_OUT, "Header1": "AI"}}
FILE = {"text": "Stored text", "metadata": {"bucket_name": "docs", "object_name": "a.pdf"}}
LINK_OUT = {"text": "Deep learning is...", "vector_distance": 0.23, "reranker_score": 0.83,
            "citation_id": 1, "type": "link", "url": "https://example.com"}  # fmt: skip
FILE_OUT = {"text": "Stored text", "vector_distance": 1.0, "reranker_score": 0.0,
            "citation_id": 0, "type": "file", "bucket_name": "docs",
            "object_name": "a.pdf"}  # fmt: skip
MESSAGES = [{"role": "user", "content": "### Question: What is Deep Learning? \n\n"}]


@pytest.fixture(scope="module")
def vllm(fake_server: FakeServer) -> Iterator[ServiceServer]:
    """The service configured for vLLM, as the reference is."""
    server = ServiceServer(settings_for(fake_server.url, model_server="vllm"))
    yield server
    server.close()


def post(server: ServiceServer, body: Any) -> httpx.Response:
    url = f"{server.url}/v1/chat/completions"
    if isinstance(body, str):
        return httpx.post(url, content=body, headers={"Content-Type": "application/json"},
                          timeout=30)  # fmt: skip
    return httpx.post(url, json=body, timeout=30)


def seed(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "max_new_tokens": 8, "stream": stream, **extra}


def whole_data(server: ServiceServer, body: dict[str, Any] | str) -> Any:
    resp = post(server, body)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def stream_frames(server: ServiceServer, body: dict[str, Any] | str) -> list[Frame]:
    resp = post(server, body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    return parse_frames(resp.text)


def trailer(frames: list[Frame]) -> Any:
    assert frames[-2].raw == "[DONE]" and frames[-1].field == "json"
    return frames[-1].json()


# --- data.reranked_docs: converted as the reference converts them ---------------------------


def test_link_and_file_docs_converted_whole_and_streamed(
    vllm: ServiceServer, fake: FakeOpenAI
) -> None:
    data = {"reranked_docs": [LINK, FILE]}
    assert whole_data(vllm, seed(False, data=data)) == {"reranked_docs": [LINK_OUT, FILE_OUT]}
    assert trailer(stream_frames(vllm, seed(True, data=data))) == {
        "reranked_docs": [LINK_OUT, FILE_OUT]
    }


def test_converted_docs_keep_the_reference_field_order(
    vllm: ServiceServer, fake: FakeOpenAI
) -> None:
    frames = stream_frames(vllm, seed(True, data={"reranked_docs": [LINK, FILE]}))
    link, file = trailer(frames)["reranked_docs"]
    assert list(link) == ["text", "vector_distance", "reranker_score", "citation_id", "type",
                          "url"]  # fmt: skip
    assert list(file) == ["text", "vector_distance", "reranker_score", "citation_id", "type",
                          "bucket_name", "object_name"]  # fmt: skip


def test_url_wins_over_bucket_and_object(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    both = {"text": "t", "metadata": {"url": "https://a", "bucket_name": "b", "object_name": "o"}}
    (doc,) = whole_data(vllm, seed(False, data={"reranked_docs": [both]}))["reranked_docs"]
    assert doc["type"] == "link" and doc["url"] == "https://a" and "bucket_name" not in doc


def test_defaults_and_coercion_as_the_reference(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    docs = [
        {"text": "", "metadata": {"url": ""}},  # present, though empty: a link
        {"text": "t", "metadata": {"url": "https://a", "citation_id": "3",
                                   "vector_distance": "0.5", "reranker_score": 1}},
    ]  # fmt: skip
    out = whole_data(vllm, seed(False, data={"reranked_docs": docs}))["reranked_docs"]
    assert out == [
        {"text": "", "vector_distance": 1.0, "reranker_score": 0.0, "citation_id": 0,
         "type": "link", "url": ""},
        {"text": "t", "vector_distance": 0.5, "reranker_score": 1.0, "citation_id": 3,
         "type": "link", "url": "https://a"},
    ]  # fmt: skip


def test_readme_example_output_with_additional_data(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    """What the README shows of each document is there, with the text and type the
    reference's code adds."""
    data = {"reranked_docs": [{"text": "Deep learning is...", "metadata": README_DOC_OUT}]}
    for docs in (
        whole_data(vllm, seed(False, data=data))["reranked_docs"],
        trailer(stream_frames(vllm, seed(True, data=data)))["reranked_docs"],
    ):
        assert docs == [{**README_DOC_OUT, "text": "Deep learning is...", "type": "link"}]


# --- when there is a trailer, and what else of data comes back -------------------------------


def test_whole_answers_always_carry_reranked_docs(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    datas: list[dict[str, Any] | None] = [
        None, {}, {"reranked_docs": []}, {"reranked_docs": None}, {"other": 1}
    ]  # fmt: skip
    for data in datas:
        body = seed(False) if data is None else seed(False, data=data)
        assert whole_data(vllm, body) == {"reranked_docs": []}


def test_stream_without_data_has_no_trailer(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    frames = stream_frames(vllm, seed(True))
    assert frames[-1].raw == "[DONE]"
    assert all(f.field == "data" for f in frames)


@pytest.mark.parametrize("data", [{}, {"reranked_docs": []}, {"user_prompt": "q"}])
def test_stream_with_data_has_a_trailer_even_empty(
    vllm: ServiceServer, fake: FakeOpenAI, data: dict[str, Any]
) -> None:
    assert trailer(stream_frames(vllm, seed(True, data=data))) == {"reranked_docs": []}


def test_other_data_keys_are_not_returned(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    """The reference returns ``{"reranked_docs": [...]}`` only; its prompt-template service
    puts ``user_prompt`` beside the documents, and that does not come back."""
    data = {"user_prompt": "What is Deep Learning?", "reranked_docs": [LINK], "x": {"y": 1}}
    assert whole_data(vllm, seed(False, data=data)) == {"reranked_docs": [LINK_OUT]}
    assert trailer(stream_frames(vllm, seed(True, data=data))) == {"reranked_docs": [LINK_OUT]}


# --- documents that cannot be converted: 400 naming the document, before any model work -----


@pytest.mark.parametrize(
    ("docs", "param", "says"),
    [
        ([{"text": "t", "metadata": {}}], "data.reranked_docs.0",
         "has neither a url nor bucket_name and object_name"),
        ([LINK, FILE, {"text": "t", "metadata": {"object_name": "a.pdf"}}], "data.reranked_docs.2",
         "has neither a url nor bucket_name and object_name"),
        ([{"text": "t"}], "data.reranked_docs.0", "has neither"),
        ([{"text": "t", "metadata": None}], "data.reranked_docs.0", "has neither"),
        ([README_DOC_OUT], "data.reranked_docs.0.text", "Field required"),
        ([{"text": 7, "metadata": {"url": "u"}}], "data.reranked_docs.0.text", "valid string"),
        ([{"text": "t", "metadata": {"url": None}}], "data.reranked_docs.0.metadata.url",
         "valid string"),
        ([{"text": "t", "metadata": {"url": "u", "citation_id": "one"}}],
         "data.reranked_docs.0.metadata.citation_id", "valid integer"),
        ([{"text": "t", "metadata": {"bucket_name": "b", "object_name": 5}}],
         "data.reranked_docs.0.metadata.object_name", "valid string"),
        ([{"text": "t", "metadata": "m"}], "data.reranked_docs.0.metadata", "must be an object"),
        (["just text"], "data.reranked_docs.0", "must be an object"),
        ("not a list", "data.reranked_docs", "must be a list"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
def test_unconvertible_doc_is_400_naming_it(
    vllm: ServiceServer, fake: FakeOpenAI, docs: Any, param: str, says: str, stream: bool
) -> None:
    resp = post(vllm, seed(stream, data={"reranked_docs": docs}))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error == {"message": error["message"], "type": "invalid_request_error",
                     "param": param, "code": 400}  # fmt: skip
    assert error["message"].startswith(f"{param}: ") and says in error["message"]
    assert fake.requests == []  # refused before the model server is asked


# --- the RAG form reports its documents in the same shape ------------------------------------


def test_rag_form_reports_used_docs_in_the_reference_shape(
    vllm: ServiceServer, fake: FakeOpenAI
) -> None:
    """So ``data.reranked_docs[i].url`` reads the same in both forms; a document without a
    source is in the prompt but not listed (it can be neither shown nor cited), nor is one
    whose values the reference's types refuse."""
    odd = {"text": "An odd source.", "metadata": {"url": 5}}
    docs = [*DOCS, {"text": "A plain note without a source."}, odd]
    body = {"question": "What is deep learning?", "reranked_docs": docs, "max_new_tokens": 8}
    expected = [
        {"text": "Deep learning uses neural networks.", "vector_distance": 0.23,
         "reranker_score": 0.83, "citation_id": 1, "type": "link",
         "url": "https://example.com/dl"},
        {"text": "Stored file text.", "vector_distance": 1.0, "reranker_score": 0.5,
         "citation_id": 2, "type": "file", "bucket_name": "docs", "object_name": "a.pdf"},
    ]  # fmt: skip
    whole = whole_data(vllm, {**body, "stream": False})
    streamed = trailer(stream_frames(vllm, {**body, "stream": True}))
    system = fake.requests[-1]["messages"][0]["content"]
    assert "A plain note without a source." in system and "An odd source." in system
    for data in (whole, streamed):
        assert data["reranked_docs"] == expected
        assert data["citations"] == []  # the fake's answer cites nothing
        assert data["context"]["docs_used"] == 4


def test_rag_form_reports_data_reranked_docs_when_given(
    vllm: ServiceServer, fake: FakeOpenAI
) -> None:
    body = {"question": "q?", "reranked_docs": DOCS, "data": {"reranked_docs": [FILE], "k": 1},
            "max_new_tokens": 8}  # fmt: skip
    for data in (
        whole_data(vllm, {**body, "stream": False}),
        trailer(stream_frames(vllm, {**body, "stream": True})),
    ):
        assert data["reranked_docs"] == [FILE_OUT]
        assert set(data) == {"reranked_docs", "citations", "context"}


def test_rag_form_refuses_bad_data_docs_too(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    body = {"question": "q?", "data": {"reranked_docs": [{"text": "t"}]}, "stream": False}
    resp = post(vllm, body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "data.reranked_docs.0"


# --- streaming: LLMParamsDoc's name for stream before OPEA 2.0 -------------------------------


def test_streaming_false_answers_whole(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    body = {"messages": MESSAGES, "max_new_tokens": 8, "streaming": False}
    resp = post(vllm, body)
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["stream"] is False
    assert fake.requests[-1]["stream"] is False


def test_streaming_true_streams(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    body = {"messages": MESSAGES, "max_new_tokens": 8, "streaming": True, "model": "m"}
    frames = stream_frames(vllm, body)  # "model" alone would mean a whole answer
    assert content_of(frames) == "Deep learning is great."


def test_streaming_and_stream_agreeing_is_fine(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(vllm, {**seed(False), "streaming": False})
    assert resp.status_code == 200 and resp.json()["stream"] is False


def test_streaming_conflicting_with_stream_is_422(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(vllm, {**seed(True), "streaming": False})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["param"] == "streaming"
    assert error["message"] == "streaming: differs from stream; give one of them"
    assert fake.requests == []


# --- the README's example requests, verbatim ------------------------------------------------


def test_readme_non_stream_example(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    resp = post(vllm, README_NON_STREAM)
    assert resp.status_code == 200
    doc = resp.json()
    assert {"id", "text", "prompt", "stream", "output_guardrail_params", "data"} <= set(doc)
    assert doc["text"] == "Deep learning is great."
    assert doc["prompt"] == "### Question: What is Deep Learning? \n\n"
    assert doc["stream"] is False and doc["output_guardrail_params"] is None
    assert doc["data"] == {"reranked_docs": []}
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": doc["text"]}
    sent = fake.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": README_SYSTEM}
    assert (sent["max_tokens"], sent["top_p"], sent["temperature"]) == (32, 0.95, 0.01)


def test_readme_stream_example(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    frames = stream_frames(vllm, README_STREAM)
    assert frames[-1].raw == "[DONE]"
    chunks = [f.json() for f in frames[:-1]]
    for chunk in chunks:
        assert {"id", "object", "created", "model", "choices"} <= set(chunk)
        assert chunk["object"] == "chat.completion.chunk"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {"content": ""},
                                        "finish_reason": "stop"}  # fmt: skip
    assert content_of(frames) == "Deep learning is great."


# --- sampling defaults: the reference's when the request leaves them out ---------------------


def test_reference_defaults_for_omitted_sampling(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    post(vllm, {"messages": MESSAGES, "stream": False})
    sent = fake.requests[-1]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (1024, 0.01, 0.95)
    # LLMParamsDoc's other defaults the reference never sent to the model server.
    assert "top_k" not in sent and "repetition_penalty" not in sent and "typical_p" not in sent


def test_given_sampling_wins(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    post(vllm, seed(False, temperature=0.7, top_p=0.5, top_k=10, repetition_penalty=1.03))
    sent = fake.requests[-1]
    assert (sent["temperature"], sent["top_p"]) == (0.7, 0.5)
    assert (sent["top_k"], sent["repetition_penalty"]) == (10, 1.03)  # vLLM takes these


def test_rag_form_gets_reference_defaults(vllm: ServiceServer, fake: FakeOpenAI) -> None:
    post(vllm, {"question": "q?", "stream": False})
    assert (fake.requests[-1]["temperature"], fake.requests[-1]["top_p"]) == (0.01, 0.95)


def test_openai_style_requests_get_the_servers_defaults(
    vllm: ServiceServer, fake: FakeOpenAI
) -> None:
    post(vllm, {"model": "any", "messages": MESSAGES})
    assert "temperature" not in fake.requests[-1] and "top_p" not in fake.requests[-1]


def test_no_reference_defaults_towards_openai(service: ServiceServer, fake: FakeOpenAI) -> None:
    post(service, {"messages": MESSAGES, "stream": False})  # the shared service plays OpenAI
    assert "temperature" not in fake.requests[-1] and "top_p" not in fake.requests[-1]
