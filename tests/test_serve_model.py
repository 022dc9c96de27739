"""`llmpipe serve-model` as applications use it: a real server process on 127.0.0.1, called
with the official `openai` client (completions, chat, streaming, errors), the try-it page in
headless Chromium, a bounded load test, and `@champion` moving while a client keeps calling.

Slow (a server process per module, ~1 min); `.ci/run` runs it. The load test's figures
(latency percentiles, 429s) are printed and written to `serve_load.json` in the test's folder
and, when set, `$LLMPIPE_SCREENSHOTS` (with the page's screenshot).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_helpers import NAME, role_tokenizer, two_version_registry

from flows.stack import free_port
from pipeline.tracking.registry import promote

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")
ADMIN_TOKEN = "serve-test-admin-token"
CHAMPION, CHALLENGER = f"{NAME}@champion", f"{NAME}@challenger"


class ServerProcess:
    def __init__(self, uri: str, folder: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        llmpipe = Path(sys.executable).with_name("llmpipe")
        command = [str(llmpipe)] if llmpipe.exists() else [sys.executable, "-m", "flows.cli"]
        command += ["serve-model", f"models:/{NAME}@champion", "--tracking-uri", uri]
        command += ["--port", str(self.port), *extra]  # the default host: 127.0.0.1
        env = {**os.environ, "LLMPIPE_SERVE_ADMIN_TOKEN": ADMIN_TOKEN}
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 180
        while not self.healthy():
            assert self.process.poll() is None, self.log_tail()
            assert time.time() < deadline, "no /healthz in 180 s\n" + self.log_tail()
            time.sleep(0.5)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def healthy(self) -> bool:
        try:
            return self.get("/healthz")["status"] == "ok"
        except OSError:
            return False

    def reload(self) -> dict:
        request = urllib.request.Request(
            self.url + "/admin/reload",
            method="POST",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    return two_version_registry(tmp_path_factory.mktemp("serve-registry"), role_tokenizer())


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-process")
    process = ServerProcess(
        registry, folder, "--poll-seconds", "1", "--max-concurrency", "2", "--max-queue", "6"
    )
    yield process
    process.stop()
    log = process.log_path.read_text()
    assert "Traceback" not in log, log[-4000:]  # no request crashed the server
    assert "Finished server process" in log  # SIGTERM: a graceful shutdown


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _save(path: Path, name: str) -> None:
    extra = os.environ.get("LLMPIPE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)


def test_openai_client_lists_models_and_completes(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {CHAMPION, CHALLENGER}
    assert models[CHAMPION].model_extra["version"] == "1"
    assert models[CHALLENGER].model_extra["version"] == "2"
    completion = client.completions.create(
        model=CHAMPION, prompt="The history of", max_tokens=8, seed=5, n=2
    )
    assert completion.system_fingerprint == f"{NAME}/v1"
    assert len(completion.choices) == 2
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage.completion_tokens > 0
    again = client.completions.create(
        model=CHAMPION, prompt="The history of", max_tokens=8, seed=5, n=2
    )
    assert [c.text for c in again.choices] == [c.text for c in completion.choices]
    challenger = client.completions.create(
        model=CHALLENGER, prompt="The history of", max_tokens=8, seed=5
    )
    assert challenger.system_fingerprint == f"{NAME}/v2"


def test_openai_client_chats_and_streams(client):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Who wrote Botchan?"},
    ]
    chat = client.chat.completions.create(
        model=CHAMPION, messages=messages, max_tokens=10, temperature=0
    )
    answer = chat.choices[0].message
    assert answer.role == "assistant" and chat.usage.prompt_tokens > 5
    stream = client.chat.completions.create(
        model=CHAMPION,
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        parts += [c.delta.content or "" for c in chunk.choices]
    assert "".join(parts) == answer.content
    assert usage.completion_tokens == chat.usage.completion_tokens
    streamed = client.completions.create(
        model=CHALLENGER, prompt="Once upon a time", max_tokens=12, stream=True, seed=1
    )
    pieces = [c.choices[0].text for c in streamed if c.choices]
    plain = client.completions.create(
        model=CHALLENGER, prompt="Once upon a time", max_tokens=12, seed=1
    )
    assert "".join(pieces) == plain.choices[0].text


def test_openai_client_raises_the_servers_errors(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4o", prompt="Hi")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=CHAMPION, prompt="Hi", max_tokens=100_000)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=CHAMPION, messages=[{"role": "user", "content": "Hi"}], top_p=1.5
        )
    assert bad.value.body["param"] == "top_p"


def test_the_page_compares_champion_and_challenger_in_chromium(server, tmp_path):
    from conftest import missing
    from test_ui_browser import _find

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    chromium = _find("chromium", "chromium-browser", "/usr/lib/chromium/chromium")
    driver_path = _find("chromedriver", "/usr/lib/chromium/chromedriver")
    if not chromium or not driver_path:
        missing("no Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server.url + "/")
        deadline = time.time() + 60
        while "version 2" not in driver.find_element(By.TAG_NAME, "body").text:
            assert time.time() < deadline, "the page did not list the models"
            time.sleep(0.5)
        Select(driver.find_element(By.ID, "preset")).select_by_visible_text("Question answering")
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("24")
        driver.find_element(By.ID, "run").click()
        while driver.find_element(By.TAG_NAME, "body").get_attribute("data-done") != "1":
            assert time.time() < deadline + 60, "the page did not finish both streams"
            time.sleep(0.5)
        cards = driver.find_elements(By.CSS_SELECTOR, ".model")
        shot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(shot))
        _save(shot, "serve-page.png")
        texts = [card.text for card in cards]
        assert len(cards) == 2
        assert CHAMPION in texts[0] and "version 1" in texts[0]
        assert CHALLENGER in texts[1] and "version 2" in texts[1]
        for card, version in zip(cards, ("v1", "v2"), strict=True):
            output = card.find_element(By.TAG_NAME, "pre").text
            stats = card.find_element(By.CSS_SELECTOR, ".stats").text
            assert "Question: Who wrote Botchan?" in output  # the QA preset, shown as sent
            assert f"{NAME}/{version}" in stats and "tokens" in stats, stats
    finally:
        driver.quit()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _call(client, i: int, max_tokens: int) -> tuple[str, float]:
    """One completion: ("ok" | "429" | "error: ...", seconds)."""
    started = time.perf_counter()
    try:
        client.completions.create(
            model=(CHAMPION, CHALLENGER)[i % 2],
            prompt=f"Request {i}: the history of",
            max_tokens=max_tokens,
            seed=i,
        )
        outcome = "ok"
    except openai.RateLimitError:
        outcome = "429"
    except openai.APIError as exc:  # anything else is a failure of the server
        outcome = f"error: {exc}"
    return outcome, time.perf_counter() - started


def _load(client, requests: int, clients: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: _call(client, i, max_tokens), range(requests)))
    seconds = time.perf_counter() - started
    outcomes = [o for o, _ in results]
    errors = [o for o in outcomes if o not in ("ok", "429")]
    assert not errors, errors[:3]
    latencies = [t for o, t in results if o == "ok"]
    assert latencies, "no request was answered"
    return {
        "requests": requests,
        "concurrent_clients": clients,
        "max_tokens": max_tokens,
        "ok": len(latencies),
        "rate_limited_429": outcomes.count("429"),
        "seconds": round(seconds, 2),
        "answered_per_second": round(len(latencies) / seconds, 1),
        "latency_ms": {
            f"p{q}": round(1000 * _percentile(latencies, q), 1) for q in (50, 90, 95, 99)
        },
    }


def test_a_bounded_load_gets_answers_or_429_never_an_error(server, client, tmp_path):
    """200 requests from 8 clients (the server's 2 running + 6 waiting places hold them all),
    then a burst of 64 from 32 clients at once (more than it holds: 429s, and no errors)."""
    steady = _load(client, requests=200, clients=8, max_tokens=16)
    burst = _load(client, requests=64, clients=32, max_tokens=32)
    figures = {
        "server": "tiny GPT (2 layers, 32 wide) on the CPU; --max-concurrency 2 --max-queue 6",
        "steady": steady,
        "burst": burst,
    }
    print("\nload test:", json.dumps(figures))
    (tmp_path / "serve_load.json").write_text(json.dumps(figures, indent=2))
    _save(tmp_path / "serve_load.json", "serve_load.json")
    assert steady["rate_limited_429"] == 0  # 8 clients never hold more than its 8 places
    health = server.get("/healthz")
    assert health["queue"]["running"] == 0 and health["queue"]["waiting"] == 0
    assert health["queue"]["refused"] == burst["rate_limited_429"]


def test_champion_moves_while_a_client_keeps_calling(server, client, registry):
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 2:
                    answer = client.completions.create(model=CHAMPION, prompt="Hi", max_tokens=8)
                    seen.append(answer.system_fingerprint)
                else:  # a stream in flight across the switch finishes on its version
                    chunks = list(
                        client.chat.completions.create(
                            model=CHAMPION,
                            messages=[{"role": "user", "content": "Hi"}],
                            max_tokens=8,
                            stream=True,
                        )
                    )
                    seen.append(chunks[-1].system_fingerprint)
            except Exception as exc:
                failures.append(repr(exc))

    def wait_for(fingerprint: str, count: int) -> None:
        deadline = time.time() + 60
        while seen[-count:] != [fingerprint] * count:
            assert time.time() < deadline and not failures, (seen[-10:], failures)
            time.sleep(0.05)

    caller = threading.Thread(target=loop)
    caller.start()
    try:
        wait_for(f"{NAME}/v1", 5)
        promote(registry, NAME, "2", reason="test: v2 takes over")
        changed = server.reload()["changed"]  # the admin endpoint: at once
        assert changed == [CHAMPION]
        wait_for(f"{NAME}/v2", 5)
        assert server.get("/healthz")["models"][0]["version"] == "2"
        promote(registry, NAME, "1", reason="test: back to v1")  # now the poller (1 s) finds it
        wait_for(f"{NAME}/v1", 5)
    finally:
        stop.set()
        caller.join(timeout=60)
    assert not failures, failures[:3]
    # In the client's order: v1 answers, then v2 answers, then v1 again; never mixed.
    runs = [seen[0]] + [b for a, b in zip(seen, seen[1:], strict=False) if a != b]
    assert runs == [f"{NAME}/v1", f"{NAME}/v2", f"{NAME}/v1"], runs
    assert {m["version"] for m in server.get("/v1/models")["data"]} == {"1", "2"}
