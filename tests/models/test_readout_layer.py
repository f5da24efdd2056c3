"""readout_layer: the last layer of a BERT-style encoder run at the readout rows only, for inference.

Scores must equal the whole layer's (fp32 and bf16, with and without prompts, cls and last readouts), the
layer must really see only those rows, and anything with autograd on or another readout keeps the full layer."""

from __future__ import annotations

import pytest
import torch

from rewardkit.data.packing import pack_sequences
from rewardkit.models import readout_layer
from rewardkit.models.readout_layer import ReadoutKeys
from rewardkit.models.segment_attention import explicit_attention
from rewardkit.scoring import RewardScorer
from tests.conftest import bert_tokenizer

TEXTS = ["Human: hi\n\nAssistant: hello there, how can I help?", "Human: what is rain?\n\nAssistant: water.",
         "Human: tell me a long story about boats and the sea\n\nAssistant: once upon a time " + "there was a boat " * 12,
         "short"]
PROMPTS = ["Say hi.", "What is rain?", "Describe boats.", "Name a tree."]
RESPONSES = ["Hello there!", "Water falling from clouds.", "Boats float " * 9, "Oak."]


def _encoder(kind: str, path, readout: str):
    import transformers as tf

    from rewardkit.models.reward_model import RewardModel

    tok = bert_tokenizer()
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=512)
    if kind == "bert":
        model = tf.BertModel(tf.BertConfig(**common))
    elif kind == "roberta":  # positions start after the pad id
        model = tf.RobertaModel(tf.RobertaConfig(**{**common, "max_position_embeddings": 514}, pad_token_id=0))
    else:
        model = tf.ElectraModel(tf.ElectraConfig(**common, embedding_size=64))
    model.save_pretrained(path / "backbone")
    tok.save_pretrained(path / "backbone")
    rm, tok = RewardModel.from_pretrained(str(path / "backbone"), readout=readout, seed=1)
    rm.save_pretrained(path / "rm", tok, max_length=128)
    return path / "rm"


def _scores(folder, bf16: bool) -> torch.Tensor:
    scorer = RewardScorer.load(folder, bf16=bf16, packed=False)
    texts = scorer.run(scorer.encode_texts(TEXTS)).score
    pairs = scorer.score_texts(PROMPTS, RESPONSES)
    return torch.cat([texts, pairs])


def _rows_seen(folder) -> list[int]:
    """Tokens the last layer's MLP sees in each forward of a bf16 text scoring."""
    scorer = RewardScorer.load(folder, bf16=True, packed=False)
    seen: list[int] = []
    layer = scorer.model.hf.base_model.encoder.layer[-1]
    layer.intermediate.dense.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-2]))
    scorer.run(scorer.encode_texts(TEXTS))
    return seen


# RoBERTa's and ELECTRA's own classifier heads read the first token only
@pytest.mark.parametrize("kind, readout", [("bert", "cls"), ("bert", "last"), ("roberta", "cls"), ("electra", "cls")])
def test_scores_equal_the_whole_layers(tmp_path, monkeypatch, kind, readout):
    folder = _encoder(kind, tmp_path, readout)
    pruned = {bf16: _scores(folder, bf16) for bf16 in (False, True)}
    # the readout row of each text (and its first token, the prompt state, for `last`) reached the MLP
    rows = [len(TEXTS) if readout == "cls" else 2 * len(TEXTS)]
    assert _rows_seen(folder) == rows
    monkeypatch.setattr(readout_layer, "LAYER_CLASSES", ())  # the whole last layer, as before this module
    assert _rows_seen(folder) != rows
    for bf16, got in pruned.items():
        want = _scores(folder, bf16)
        torch.testing.assert_close(got, want, atol=1e-2 if bf16 else 1e-5, rtol=0)


def test_mean_readout_and_training_keep_the_whole_layer(tmp_path):
    folder = _encoder("bert", tmp_path, "mean")
    assert _rows_seen(folder) != [len(TEXTS)]
    cls_folder = _encoder("bert", tmp_path / "cls", "cls")
    scorer = RewardScorer.load(cls_folder, bf16=False, packed=False)
    seen: list[int] = []
    scorer.model.hf.base_model.encoder.layer[-1].intermediate.dense.register_forward_hook(
        lambda m, a, o: seen.append(a[0].shape[-2]))
    seqs = scorer.encode_texts(TEXTS)
    batch = pack_sequences(seqs, scorer.tokenizer.pad_token_id, causal=False, flat=True)
    scorer.model(batch).sum().backward()  # gradients need every row of the last layer
    assert seen == [sum(len(s.input_ids) for s in seqs)]


def test_masked_units_attend_like_the_whole_unit():
    """A shared-prompt-style mask: each readout row gets the row of the whole unit's attention."""
    g = torch.Generator().manual_seed(0)
    n, h, d = 9, 2, 4
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    mask[6:, 3:6] = False
    want = explicit_attention(q, k, v, mask, causal=True)  # (1, H, n, D)
    rows = torch.tensor([2, 5, 8])
    keys = ReadoutKeys(k, v, [(0, 3, 0, n, mask[rows])])
    got = keys.attend(q[:, :, rows], None, torch.float32)  # (1, R, H, D)
    torch.testing.assert_close(got, want[:, :, rows].transpose(1, 2))
