"""Images per second of each image scorer, forward only (evaluation) and forward + backward (training reward).

    python benchmarks/scorer_speed.py                       # tiny random weights on the CPU
    python benchmarks/scorer_speed.py --real --device cuda  # released sizes, random weights, bf16, batch 32 and 64

Tiny scorers are loaded from a weights folder in the released formats (the tests' builder); real-size ones are
built in memory with the released architectures (ViT-H-14 for HPSv2 and PickScore, ViT-L/14 for CLIP score
and aesthetic, BLIP ViT-L/16 + BERT-base for ImageReward), which time the same as trained weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
PROMPT = "a watercolor painting of a lighthouse on a cliff at sunset"


def tiny_scorers(folder: Path) -> dict:
    from bench.rewards import SCORERS, load_scorer

    from random_weights import write_weights

    write_weights(folder)
    return {name: load_scorer(name, str(folder)) for name in SCORERS}


def real_scorers(folder: Path) -> dict:
    from transformers import (
        BertTokenizer,
        BlipTextConfig,
        BlipTextModel,
        BlipVisionConfig,
        BlipVisionModel,
        CLIPModel,
        CLIPTokenizer,
    )

    from bench.rewards.clip import VIT_H_14, Aesthetic, ClipScore, HPSv2, PickScore, RewardMLP, hf_config_of
    from bench.rewards.image_reward import ImageReward

    from random_weights import bert_vocab, clip_tokenizer

    clip_tokenizer(folder / "clip")
    bert_vocab(folder / "bert")
    clip_tok, bert_tok = CLIPTokenizer.from_pretrained(folder / "clip"), BertTokenizer.from_pretrained(folder / "bert")
    vit_l = {"embed_dim": 768, "quick_gelu": True,
             "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}}
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=224, patch_size=16,
                                              layer_norm_eps=1e-6))
    text = BlipTextModel(BlipTextConfig(vocab_size=30524, encoder_hidden_size=1024), add_pooling_layer=False)
    return {"hpsv2": HPSv2(CLIPModel(hf_config_of(VIT_H_14)), clip_tok, []),
            "pickscore": PickScore(CLIPModel(hf_config_of(VIT_H_14)), clip_tok, []),
            "clip_score": ClipScore(CLIPModel(hf_config_of(vit_l)), clip_tok, []),
            "aesthetic": Aesthetic(CLIPModel(hf_config_of(vit_l)), RewardMLP(768), []),
            "image_reward": ImageReward(vision, text, RewardMLP(768), bert_tok, {})}


def rate(scorer, batch: int, device, dtype, backward: bool, repeats: int) -> float:
    images = torch.rand(batch, 3, 512, 512, device=device)
    prompts = [PROMPT] * batch

    def once():
        pixels = images.clone().requires_grad_(backward)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            scores = scorer(pixels, prompts)
        if backward:
            scores.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    once()  # warm-up: kernels, allocator
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="released sizes (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.real else torch.float32
    batches = (32, 64) if args.real else (16,)
    with tempfile.TemporaryDirectory() as tmp:
        scorers = (real_scorers if args.real else tiny_scorers)(Path(tmp))
    print(f"device {device}, {'released sizes, bf16 autocast' if args.real else 'tiny, fp32'}, "
          f"512 px inputs, {torch.get_num_threads()} threads")
    print(f"{'scorer':<14}{'batch':>6}{'score img/s':>14}{'reward fwd+bwd img/s':>24}")
    for name, scorer in scorers.items():
        scorer.to(device)
        for batch in batches:
            forward = rate(scorer, batch, device, dtype, False, args.repeats)
            both = rate(scorer, batch, device, dtype, True, args.repeats)
            print(f"{name:<14}{batch:>6}{forward:>14.1f}{both:>24.1f}")
        scorer.cpu()


if __name__ == "__main__":
    main()
