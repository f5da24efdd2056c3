"""Schemathesis against the live server's own OpenAPI schema (loopback, tiny model, API key on).

Every operation gets a few valid (positive) and invalid (negative) generated requests; each answer must not
be a 5xx and must match what the schema declares (status code, content type, body schema, headers); with
the key the schema declares, a request without it must be refused (401), and invalid data must be refused
(4xx). Seeds are fixed (derandomize) so `make test` is reproducible; the budget is a few examples per route
(set REWARDKIT_FUZZ_EXAMPLES for more).
"""

from __future__ import annotations

import os

import pytest

from serve_helpers import ServerThread
from serve_helpers import rm_dirs  # noqa: F401  (fixture)

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, ignored_auth,  # noqa: E402
                                               negative_data_rejection, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from rewardkit.serve.app import build_app  # noqa: E402
from rewardkit.serve.batcher import BatchSettings  # noqa: E402
from rewardkit.serve.combine import single_model  # noqa: E402
from rewardkit.serve.service import ServeSettings  # noqa: E402

KEY = {"Authorization": "Bearer fuzz-key"}
# Per operation (10 operations; 7 take a body). REWARDKIT_FUZZ_EXAMPLES=N runs N of each, for a longer hunt.
EXAMPLES = ({m: int(os.environ["REWARDKIT_FUZZ_EXAMPLES"]) for m in ("positive", "negative")}
            if os.environ.get("REWARDKIT_FUZZ_EXAMPLES") else {"positive": 6, "negative": 5})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
MODE_CHECKS = {"positive": [ignored_auth], "negative": [negative_data_rejection]}


@pytest.fixture(scope="module")
def live(rm_dirs):  # noqa: F811
    settings = ServeSettings(api_key="fuzz-key", max_texts=8, max_body_bytes=256_000, body_timeout=10,
                             batch=BatchSettings(max_batch_size=16, max_wait_ms=1))
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), settings)) as s:
        yield s


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_get_no_5xx_and_only_declared_answers(live, mode):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json", headers=KEY)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /get_reward", "POST /v1/score", "POST /v1/compare", "POST /v1/rank", "POST /classify",
        "POST /pooling", "POST /score", "GET /v1/models", "GET /metrics", "GET /health"}
    statuses: dict[int, int] = {}
    for op in operations:
        if mode == "negative" and op.method.upper() != "POST":
            continue  # a GET without parameters has nothing to make invalid
        @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        def fuzz(case):
            response = case.call_and_validate(base_url=live.url, headers=KEY, checks=CHECKS + MODE_CHECKS[mode],
                                              timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        fuzz()
    assert not [code for code in statuses if code >= 500]
    if mode == "positive":
        # Schema-valid is not always servable (e.g. an item with neither `response` nor `messages`): 422s remain.
        assert statuses.get(200, 0) > 0.3 * sum(statuses.values()), statuses
    else:
        assert statuses.get(422, 0) > 0, statuses
