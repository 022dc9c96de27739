"""`llmpipe serve-model` in process: the OpenAI request and response shapes, the chat template,
stop strings and streamed deltas, OpenAI-shaped errors, the bounded queue (429) and alias
following, on small real models and a real MLflow registry. (The server over a real socket,
the `openai` client, a load test and the page in Chromium: tests/test_serve_model.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from serve_helpers import NAME, model_folder, role_tokenizer, two_version_registry

from pipeline.serve.admission import Admission, QueueFull
from pipeline.serve.app import Server, build_server, create_app
from pipeline.serve.generation import Sampling, generate
from pipeline.serve.models import ModelRef, ModelSet
from pipeline.serve.protocol import ChatMessage, chat_prompt
from pipeline.tracking.registry import promote


@pytest.fixture(scope="module")
def tokenizer():
    return role_tokenizer()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    return model_folder(tmp_path_factory.mktemp("serve-model") / "tiny", tokenizer)


@pytest.fixture(scope="module")
def models(folder):
    return ModelSet([ModelRef.parse(str(folder))], tracking_uri=None, device="cpu")


@pytest.fixture
def client(models):
    server = Server(models, Admission(concurrency=1, queue=1), poll_seconds=None)
    with TestClient(create_app(server)) as client:
        client.server = server
        yield client


def _messages(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=text) for role, text in pairs]


def test_chat_prompt_is_the_fine_tuning_format():
    messages = _messages(
        ("system", "Answer briefly."),
        ("user", "Who wrote Botchan?"),
        ("assistant", "Soseki."),
        ("user", "When?"),
    )
    assert chat_prompt(messages, role_tokens=True) == (
        "<|user|>Answer briefly.\n\nWho wrote Botchan?<|assistant|>Soseki.<|endoftext|>"
        "<|user|>When?<|assistant|>"
    )
    # A last assistant message is continued (prefilled), not closed.
    prefill = _messages(("user", "Say hi"), ("assistant", "Hi"))
    assert chat_prompt(prefill, role_tokens=True) == "<|user|>Say hi<|assistant|>Hi"
    # A tokenizer without role tokens (an imported GPT-2 one) gets plain turns.
    assert chat_prompt(_messages(("user", "Hello")), role_tokens=False) == "User: Hello\nAssistant:"


def test_the_role_markers_are_single_tokens_in_the_prompt(models, tokenizer):
    loaded = models.get(next(iter(models.models))).current
    assert loaded.role_tokens
    ids = tokenizer.encode(chat_prompt(_messages(("user", "Hi")), True)).ids
    assert ids[0] == tokenizer.token_to_id("<|user|>")
    assert ids[-1] == tokenizer.token_to_id("<|assistant|>")


def test_stop_strings_cut_the_text_and_streamed_deltas_add_up(models, tokenizer):
    loaded = models.get(next(iter(models.models))).current
    prompt = tokenizer.encode("The history of").ids
    free = generate(loaded, prompt, Sampling(max_tokens=24, n=3, seed=7))
    assert [c.index for c in free] == [0, 1, 2]
    assert len({c.text for c in free}) == 3  # one batch, three different samples
    again = generate(loaded, prompt, Sampling(max_tokens=24, n=3, seed=7))
    assert [c.text for c in again] == [c.text for c in free]  # a seed fixes the samples
    text = free[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    deltas: dict[int, str] = {}
    cut = generate(
        loaded,
        prompt,
        Sampling(max_tokens=24, n=3, seed=7, stop=(stop,)),
        on_delta=lambda i, d: deltas.__setitem__(i, deltas.get(i, "") + d),
    )
    assert cut[0].text == text[: text.find(stop)] and cut[0].finish_reason == "stop"
    for choice in cut:
        assert stop not in choice.text
        assert deltas.get(choice.index, "") == choice.text  # what was streamed is the answer
        assert choice.finish_reason in ("stop", "length")


def test_completions_answer_in_openai_shape_with_usage(client, tokenizer):
    model = client.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "prompt": ["The history of", "He was"], "max_tokens": 5, "n": 2}
    response = client.post("/v1/completions", json={**body, "seed": 3, "echo": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-")
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    assert answer["choices"][0]["text"].startswith("The history of")  # echo
    assert answer["choices"][3]["text"].startswith("He was")
    usage = answer["usage"]
    prompt_tokens = len(tokenizer.encode("The history of").ids) + len(
        tokenizer.encode("He was").ids
    )
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 4 * 5
    assert answer["system_fingerprint"] == f"folder/{model}"


def test_streaming_sends_what_a_plain_request_answers(client):
    model = client.get("/v1/models").json()["data"][0]["id"]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Who wrote Botchan?"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    plain = client.post("/v1/chat/completions", json=body).json()
    assert plain["object"] == "chat.completion"
    message = plain["choices"][0]["message"]
    assert message["role"] == "assistant"
    streamed, usage, finish = "", None, None
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        event = json.loads(line.removeprefix("data: "))
        assert event["object"] == "chat.completion.chunk"
        usage = event.get("usage") or usage
        for choice in event["choices"]:
            streamed += choice["delta"].get("content") or ""
            finish = choice["finish_reason"] or finish
    assert streamed == message["content"]  # greedy: the same text either way
    assert finish == plain["choices"][0]["finish_reason"]
    assert usage == plain["usage"]


@pytest.mark.parametrize(
    ("change", "status", "param", "code"),
    [
        ({"model": "no-such-model"}, 404, "model", "model_not_found"),
        ({"max_tokens": 5000}, 400, "prompt", "context_length_exceeded"),
        ({"prompt": "word " * 600}, 400, "prompt", "context_length_exceeded"),
        ({"temperature": 3}, 400, "temperature", None),
        ({"n": 0}, 400, "n", None),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
        ({"logprobs": 2}, 400, "logprobs", "unsupported_parameter"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty", "unsupported_parameter"),
        ({"frobnicate": True}, 400, "frobnicate", "extra_forbidden"),
        ({"prompt": [999999]}, 400, "prompt", None),
    ],
)
def test_bad_requests_get_openai_errors_that_name_the_problem(client, change, status, param, code):
    model = client.get("/v1/models").json()["data"][0]["id"]
    response = client.post("/v1/completions", json={"model": model, "prompt": "Hi", **change})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    if code:
        assert error["code"] == code


def test_bad_chat_requests_and_bodies(client):
    model = client.get("/v1/models").json()["data"][0]["id"]
    tool = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "tool", "content": "x"}]},
    )
    assert tool.status_code == 400 and tool.json()["error"]["param"].startswith("messages")
    system_only = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "system", "content": "x"}]},
    )
    assert system_only.status_code == 400
    not_json = client.post(
        "/v1/completions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]


def test_a_full_queue_answers_429_and_recovers(client):
    server = client.server
    model = client.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "prompt": "Hi", "max_tokens": 2}
    # Two requests hold the only generation slot and the only queue place (entered in the
    # server's own event loop, as requests in flight would).
    client.portal.call(server.admission.enter)
    waiting = client.portal.start_task_soon(server.admission.enter)
    while server.admission.waiting < 1:
        pass
    refused = client.post("/v1/completions", json=body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["retry-after"]
    assert client.get("/healthz").json()["queue"]["refused"] == 1
    client.portal.call(server.admission.leave)
    waiting.result()
    client.portal.call(server.admission.leave)
    assert client.post("/v1/completions", json=body).status_code == 200


def test_admission_runs_in_order_and_refuses_beyond_the_queue():
    async def scenario() -> list[str]:
        admission = Admission(concurrency=1, queue=1)
        order: list[str] = []
        await admission.enter()
        order.append("a runs")
        waiter = asyncio.create_task(admission.enter())
        await asyncio.sleep(0)
        assert (admission.running, admission.waiting) == (1, 1)
        with pytest.raises(QueueFull):
            await admission.enter()
        admission.leave()
        await waiter
        order.append("b runs")
        admission.leave()
        assert admission.admitted == 0 and admission.refused == 1
        return order

    assert asyncio.run(scenario()) == ["a runs", "b runs"]


def test_page_presets_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and "try the served models" in page.text
    presets = {p["task"]: p["prompt"] for p in client.get("/ui/presets").json()}
    assert presets["qa"].endswith("\nAnswer:") and "Question: Who wrote Botchan?" in presets["qa"]
    assert presets["summarization"].endswith("\nTL;DR:")
    assert presets["translation"].endswith("French:")
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["queue"]["concurrency"] == 1
    admin = client.post("/admin/reload")
    assert admin.status_code == 403  # no admin token configured: the endpoint is off


def test_the_server_follows_the_alias_and_finishes_requests_on_the_old_version(tmp_path, tokenizer):
    uri = two_version_registry(tmp_path, tokenizer)
    server = build_server(f"models:/{NAME}@champion", uri, ["challenger"], admin_token="t0ken")
    assert [m["version"] for m in server.models.describe()] == ["1", "2"]
    old = server.models.get(f"{NAME}@champion").current
    with TestClient(create_app(server)) as client:
        assert (
            client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        body = {"model": f"{NAME}@champion", "prompt": "Hi", "max_tokens": 3}
        assert (
            client.post("/v1/completions", json=body).json()["system_fingerprint"] == f"{NAME}/v1"
        )
        promote(uri, NAME, "2", reason="test")
        reload = client.post("/admin/reload", headers={"Authorization": "Bearer t0ken"})
        assert reload.status_code == 200 and reload.json()["changed"] == [f"{NAME}@champion"]
        answer = client.post("/v1/completions", json=body)
        assert answer.json()["system_fingerprint"] == f"{NAME}/v2"
        assert answer.headers["x-llmpipe-model-version"] == "2"
        models = {m["id"]: m["version"] for m in client.get("/v1/models").json()["data"]}
        assert models == {f"{NAME}@champion": "2", f"{NAME}@challenger": "2"}
        # The version two aliases name is loaded once.
        new = server.models.get(f"{NAME}@champion").current
        assert server.models.get(f"{NAME}@challenger").current is new
    # A request that started on v1 keeps its model object to its end.
    assert generate(old, [1, 2, 3], Sampling(max_tokens=2, seed=0))[0].tokens >= 1
