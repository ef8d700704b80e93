"""Image scorers built from tiny random weights in their released on-disk formats, loaded the way users load
them: shapes, determinism, gradients to the pixels, and each scorer's own preprocessing and formula."""

import pytest
import torch
import torch.nn.functional as F

from bench.errors import UsageError
from bench.rewards import SCORERS, load_scorer
from bench.rewards.scorer import normalise, resize_crop, resize_pad

from random_weights import tiny_blip, tiny_clip, write_weights

PROMPTS = ["a red fox in snow", "an oil painting of a harbour", "anime city at night", "a bowl of fruit"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 40, 56, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", SCORERS)
def test_scorer_shape_determinism_and_pixel_gradients(name, weights, images):
    scorer = load_scorer(name, str(weights))
    pixels = images.clone().requires_grad_(True)
    scores = scorer(pixels, PROMPTS)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert torch.equal(scorer.score(images, PROMPTS), scores.detach())
    assert scores.std() > 0  # different images get different scores
    scores.sum().backward()
    assert pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in scorer.parameters())
    assert scorer.info["name"] == name and len(next(iter(scorer.info["weights_sha256"].values()))) == 64


def clip_text(model, tokenizer, prompts):
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt").input_ids
    return F.normalize(model.get_text_features(input_ids=ids), dim=-1)


def test_hpsv2_pads_to_square_and_is_100_cosine_of_the_saved_open_clip_model(weights, images):
    wide = torch.ones(1, 3, 20, 40)
    padded = resize_pad(wide, 32)
    assert padded.shape == (1, 3, 32, 32)
    assert padded[..., :8, :].abs().max() == 0 and padded[..., 24:, :].abs().max() == 0  # black bands
    assert torch.allclose(padded[..., 8:24, :], torch.ones(1, 3, 16, 32), atol=1e-5)

    scorer = load_scorer("hpsv2", str(weights))
    model = tiny_clip(seed=0)  # the model write_weights saved in open_clip's layout
    image = F.normalize(model.get_image_features(pixel_values=normalise(resize_pad(images, 32))), dim=-1)
    expected = 100 * (image * clip_text(model, scorer.tokenizer, PROMPTS)).sum(-1)
    torch.testing.assert_close(scorer.score(images, PROMPTS), expected.detach(), rtol=1e-5, atol=1e-4)
    assert load_scorer("hpsv2.1", str(weights)).info["version"] == "2.1"


def test_pickscore_clip_score_and_aesthetic_formulas(weights, images):
    for name, seed in (("pickscore", 2), ("clip_score", 3)):
        model = tiny_clip(seed)
        scorer = load_scorer(name, str(weights))
        image = F.normalize(model.get_image_features(pixel_values=normalise(resize_crop(images, 32))), dim=-1)
        cosine = (image * clip_text(model, scorer.tokenizer, PROMPTS)).sum(-1).detach()
        expected = model.logit_scale.exp().detach() * cosine if name == "pickscore" else (100 * cosine).clamp(min=0)
        torch.testing.assert_close(scorer.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-4)

    aesthetic = load_scorer("aesthetic", str(weights))
    embedding = tiny_clip(4).get_image_features(pixel_values=normalise(resize_crop(images, 32)))
    expected = aesthetic.mlp(F.normalize(embedding, dim=-1)).detach()
    torch.testing.assert_close(aesthetic.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(aesthetic.mlp(embedding).detach(), expected)  # the L2 normalisation matters
    torch.testing.assert_close(aesthetic.score(images, PROMPTS[::-1]), expected, rtol=1e-5, atol=1e-5)


def test_image_reward_normalisation_and_tokens(weights, images):
    scorer = load_scorer("image_reward", str(weights))
    vocab = scorer.tokenizer.vocab_size
    assert scorer.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [vocab, vocab + 1]
    vision, text = tiny_blip(vocab + 2, seed=6)
    pixels = normalise(resize_crop(images, 32), (0.48145466, 0.4578275, 0.40821073),
                       (0.26862954, 0.26130258, 0.27577711))
    tokens = scorer.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens.input_ids.shape == (4, 35)
    image_tokens = vision(pixel_values=pixels).last_hidden_state
    first = text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, encoder_hidden_states=image_tokens,
                 encoder_attention_mask=torch.ones(image_tokens.shape[:-1], dtype=torch.long)).last_hidden_state[:, 0]
    expected = ((scorer.mlp(first) - 0.16717362830052426) / 1.0333394966054072).detach()  # the release's constants
    torch.testing.assert_close(scorer.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    # The prompt enters through cross-attention: another caption gives another score.
    assert not torch.allclose(scorer.score(images, PROMPTS[::-1]), expected)


def test_missing_hub_weights_say_where_they_were_looked_for(monkeypatch, hub_unreachable):
    """Without weights=DIR a scorer asks the hub cache; a miss there (stubbed: no hub here) is one line to act on."""
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    with pytest.raises(UsageError) as err:
        load_scorer("image_reward")
    message = str(err.value)
    assert "ImageReward.pt" in message and "THUDM/ImageReward" in message and "LocalEntryNotFoundError" in message
    assert "weights=DIR" in message and "BENCH_WEIGHTS" in message


def test_weighted_reward_is_the_weighted_sum(weights, images):
    from bench.rewards.analytic import build_reward

    captions = ["a red fox in snow", "a bowl of fruit"]
    reward = build_reward("{aesthetic: 2, linear: -1}", captions, (3, 8, 8), str(weights))
    x = torch.rand(2, 3 * 8 * 8) * 2 - 1
    cond = torch.tensor([0, 1])
    aesthetic = load_scorer("aesthetic", str(weights)).score((x.reshape(2, 3, 8, 8) + 1) / 2, captions)
    linear = build_reward("linear", captions, (3, 8, 8), None)(x, cond)
    torch.testing.assert_close(reward(x, cond).detach(), 2 * aesthetic - linear, rtol=1e-5, atol=1e-5)
