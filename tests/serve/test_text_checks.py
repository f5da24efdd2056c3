"""Texts the tokenizer cannot read are refused at validation: a lone UTF-16 surrogate (valid JSON, which
Python's json.dumps writes for such a string) is a 422 naming the field on every route, never a 500."""

from __future__ import annotations

import json

import pytest

from serve_helpers import ServerThread, httpx
from serve_helpers import rm_dirs  # noqa: F401  (fixture)

from rewardkit.serve.app import build_app  # noqa: E402
from rewardkit.serve.combine import single_model  # noqa: E402
from rewardkit.serve.service import ServeSettings  # noqa: E402

MSGS = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad \ud800"}]
# (route, body, the field the 422 must name)
BAD = [("/get_reward", {"query": ["ok", "bad \ud800 text"]}, "query.1: "),
       ("/v1/score", {"items": [{"prompt": "q", "response": "\udfff"}]}, "items.0.response: "),
       ("/v1/score", {"items": [{"messages": MSGS}]}, "items.0.messages.1.content: "),
       ("/v1/score", {"queries": "q", "documents": ["a", "\ud800"]}, "documents: "),
       ("/v1/compare", {"items": [{"prompt": "q", "a": "\ud800", "b": "x"}]}, "items.0.a: "),
       ("/v1/rank", {"prompt": "q\ud800", "candidates": ["a"]}, "prompt: "),
       ("/v1/rank", {"prompt": "q", "candidates": ["a", MSGS[1:]]}, "candidates.1.list[ChatMessage].0.content: "),
       ("/classify", {"input": "\ud800"}, "input: "),
       ("/classify", {"input": "x", "model": "rm\ud800"}, "model: "),  # echoed back: would fail to encode
       ("/pooling", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
        "messages.0.content: "),
       ("/score", {"text_1": "\ud800", "text_2": "a"}, "text_1: ")]


@pytest.fixture(scope="module")
def server(rm_dirs):  # noqa: F811
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), ServeSettings())) as s:
        yield s


@pytest.mark.parametrize("route,body,field", BAD, ids=[f"{r}:{f.split(':')[0]}" for r, _, f in BAD])
def test_a_lone_surrogate_is_a_422_naming_the_field(server, route, body, field):
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as the JSON escape \ud800, as valid JSON
    assert "\\ud" in raw
    r = httpx.post(server.url + route, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert field in detail and "lone surrogate (\\ud" in detail, detail


def test_surrogate_pairs_and_other_unicode_still_score(server):
    texts = ["emoji \U0001F600 ok", "café", "数学"]  # \U0001F600 travels as the pair \ud83d\ude00
    r = httpx.post(server.url + "/get_reward", content=json.dumps({"query": texts}),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["rewards"]) == 3, r.text
