"""Tiny random diffusers pipelines saved to disk, the shape of the real ones (a few hundred KB)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.teach import clip_vocabulary, t5_tokenizer


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
    clip_vocabulary(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd15")
    assert json.loads((folder / "sd15" / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    return folder / "sd15"


def tiny_pixart(folder: Path, seed: int = 0) -> Path:
    """PixArtAlphaPipeline: PixArtTransformer2DModel (learned variance) + T5 encoder + AutoencoderKL."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=4,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           out_channels=8, cross_attention_dim=8, norm_elementwise_affine=False,
                                           norm_eps=1e-6, norm_type="ada_norm_single")
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2, sample_size=32)
    text = T5EncoderModel(T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   pad_token_id=0, eos_token_id=1))
    tokenizer = t5_tokenizer(folder / "t5tok")
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=transformer,
                               scheduler=scheduler)
    pipe.save_pretrained(folder / "pixart")
    return folder / "pixart"


def tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """StableDiffusionXLPipeline: a UNet with text-and-time added conditioning on two CLIP encoders (the second with
    a projection, whose pooled output the UNet also reads) + AutoencoderKL, epsilon prediction."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    width, pooled, time_width = 8, 8, 4
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, cross_attention_dim=2 * width, norm_num_groups=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                                addition_embed_type="text_time", addition_time_embed_dim=time_width,
                                projection_class_embeddings_input_dim=pooled + 6 * time_width)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2, sample_size=32, scaling_factor=0.13025)
    text = dict(vocab_size=54, hidden_size=width, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=52, eos_token_id=53, pad_token_id=53)
    encoder = CLIPTextModel(CLIPTextConfig(**text))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=pooled))
    clip_vocabulary(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder / "sdxl")
    return folder / "sdxl"


def tiny_sd3(folder: Path, seed: int = 0) -> Path:
    """StableDiffusion3Pipeline: an MMDiT (SD3Transformer2DModel) predicting the flow's velocity, on two CLIP
    encoders with projections (pooled outputs side by side) and a T5 encoder, 16-channel latents of an AutoencoderKL
    with SD3's scaling and shift, and the flow-matching scheduler with SD3's shift 3."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    width, pooled, joint = 8, 8, 32
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=4, num_attention_heads=2, joint_attention_dim=joint,
                                        caption_projection_dim=8, pooled_projection_dim=2 * pooled,
                                        pos_embed_max_size=16)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609,
                        use_quant_conv=False, use_post_quant_conv=False)
    text = dict(vocab_size=54, hidden_size=width, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=52, eos_token_id=53, pad_token_id=53, projection_dim=pooled)
    encoder, encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text)), CLIPTextModelWithProjection(
        CLIPTextConfig(**text))
    clip_vocabulary(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", model_max_length=77)
    encoder_3 = T5EncoderModel(T5Config(vocab_size=32, d_model=joint, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                        pad_token_id=0, eos_token_id=1))
    tokenizer_3 = t5_tokenizer(folder / "t5tok", length=256)  # the pipeline's default T5 sequence
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=encoder,
                                    tokenizer=tokenizer, text_encoder_2=encoder_2, tokenizer_2=tokenizer,
                                    text_encoder_3=encoder_3, tokenizer_3=tokenizer_3)
    pipe.save_pretrained(folder / "sd3")
    return folder / "sd3"
