"""The Python API refuses the inputs users get wrong instead of scoring something else: a lone string where
a list goes (it iterated into characters), messages the CLI and the server refuse, None prompts; and the
smaller traps of the public objects (constructor max_length, normalising with an unusable std, `train`)."""

from __future__ import annotations

import pytest

from rewardkit.scoring import RewardScorer
from tests.conftest import saved_reward_model


@pytest.fixture(scope="module")
def chat_scorer(tiny_models, tmp_path_factory) -> RewardScorer:
    return RewardScorer.load(saved_reward_model(tiny_models["llama"], tmp_path_factory.mktemp("rm") / "rm"))


@pytest.mark.parametrize("call", [
    lambda s: s.score("Why?", ["a", "b", "c", "d"]),  # len("Why?") == 4: no length error to catch it
    lambda s: s.score(["p1", "p2"], "ok"),
    lambda s: s.score_details("ab", "cd"),
    lambda s: s.score_texts("ab", "cd"),
    lambda s: s.compare("p", "a", "b"),
    lambda s: s.rank("prompt", "Hello"),
    lambda s: s.rank_many("ab", [["x"], ["y"]]),
    lambda s: s.score_full_texts("hi"),
    lambda s: s.score_messages([{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]),
])
def test_a_lone_string_or_message_is_refused(chat_scorer, call):
    with pytest.raises(TypeError, match="expected a (list|chat)"):
        call(chat_scorer)


@pytest.mark.parametrize("response, problem", [
    ([{"role": "bot", "content": "x"}], r"responses\[0\]\[0\]\.role: unknown role 'bot'"),
    ([{"role": "assistant", "content": None}], r"responses\[0\]\[0\]\.content: is null"),
    ([{"role": "assistant", "content": 5}], r"responses\[0\]\[0\]\.content: expected a string, got int"),
    ([{"from": "gpt", "value": "x"}], r"responses\[0\]\[0\]\.role: missing"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]}], "only text parts"),
])
def test_bad_messages_are_refused_as_the_server_refuses_them(chat_scorer, response, problem):
    with pytest.raises(ValueError, match=problem):
        chat_scorer.score(["What is 2+2?"], [response])


@pytest.mark.parametrize("prompt, response", [(None, "r"), ("p", None), ("p", 5), ("p", b"x")])
def test_other_item_types_are_refused(chat_scorer, prompt, response):
    with pytest.raises(TypeError, match=r"(prompts|responses)\[0\]: expected a string or a list of chat messages"):
        chat_scorer.score([prompt], [response])
    with pytest.raises(TypeError, match=r"texts\[0\]: expected a string"):
        chat_scorer.score_full_texts([None])


def test_text_parts_score_as_the_joined_text(chat_scorer):
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "It is"}, {"type": "text", "text": "4."}]}]
    joined = [{"role": "assistant", "content": "It is\n4."}]
    assert chat_scorer.score(["What is 2+2?"], [parts]) == chat_scorer.score(["What is 2+2?"], [joined])


def test_score_messages_checks_each_chat(chat_scorer):
    with pytest.raises(ValueError, match=r"conversations\[1\]: empty chat"):
        chat_scorer.score_messages([[{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}], []])
    chat = [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert chat_scorer.score_messages([chat]) == chat_scorer.score([chat[:1]], [chat[1:]])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_constructor_reads_the_trained_max_length(tiny_models, tmp_path, kind):
    from rewardkit.models.reward_model import RewardModel

    folder = saved_reward_model(tiny_models[kind], tmp_path / "rm", max_length=64)
    model, tok = RewardModel.from_pretrained(str(folder))
    direct = RewardScorer(model, tok)
    loaded = RewardScorer.load(folder)
    assert direct.encoder.max_length == loaded.encoder.max_length == 64
    long = "word " * 3000  # past GPT-2's 512 positions: an IndexError before
    assert direct.score(["p"], [long]) == pytest.approx(loaded.score(["p"], [long]), abs=1e-6)


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_normalising_with_an_unusable_std_is_refused(chat_scorer, std, monkeypatch):
    from rewardkit.serve.combine import Single
    from rewardkit.serve.service import RewardService, ServeSettings

    monkeypatch.setattr(chat_scorer.model, "std", std)
    assert len(chat_scorer.score(["p"], ["r"])) == 1  # raw scores are fine
    with pytest.raises(ValueError, match="cannot normalise"):
        chat_scorer.score(["p"], ["r"], normalize=True)
    with pytest.raises(ValueError, match="cannot normalise"):  # at start-up, not on every request
        RewardService({"rm": chat_scorer}, Single("rm"), ServeSettings(normalize=True))
    RewardService({"rm": chat_scorer}, Single("rm"), ServeSettings(normalize=False))


def test_train_is_callable_after_its_package_was_imported(monkeypatch):
    import rewardkit
    import rewardkit.train as package

    calls = []
    monkeypatch.setattr(package, "train", lambda cfg: calls.append(cfg) or "done")
    from rewardkit import train

    assert train("cfg") == "done" and rewardkit.train("cfg2") == "done" and calls == ["cfg", "cfg2"]


def test_client_refuses_a_lone_string_and_takes_openrlhfs_url():
    from rewardkit.serve.client import RewardClient

    client = RewardClient("http://127.0.0.1:9/get_reward/")
    assert client.base_urls == ["http://127.0.0.1:9"]
    assert RewardClient(base_urls=["http://a:1/get_reward", "http://b:2"]).base_urls == ["http://a:1", "http://b:2"]
    for call in (lambda: client.get_reward("hello there"), lambda: client.score("ab", "cd"),
                 lambda: client.compare("p", "a", "b"), lambda: client.rank("p", "abc")):
        with pytest.raises(TypeError, match="expected a list"):
            call()
