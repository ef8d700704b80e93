"""Tiny random diffusers pipelines saved to disk, the shape of the real ones (a few hundred KB)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from random_weights import clip_tokenizer


def tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """StableDiffusionPipeline: UNet2DConditionModel + CLIP text encoder + AutoencoderKL, epsilon prediction."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, cross_attention_dim=8, norm_num_groups=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2, sample_size=32)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=54, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, bos_token_id=52,
                                        eos_token_id=53, pad_token_id=53))
    clip_tokenizer(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd15")
    assert json.loads((folder / "sd15" / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    return folder / "sd15"
