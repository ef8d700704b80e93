"""ImageReward v1.0 on transformers' BLIP modules.

The checkpoint `ImageReward.pt` holds a BLIP ViT (timm layout), a BERT text encoder with cross-attention to
the image tokens (BLIP's med.py layout, which transformers' BlipTextModel keeps), and an MLP on the text
encoder's first token. The image-reward package itself no longer imports against current transformers
(ECOSYSTEM.md); `benchmarks/reference_parity.py` compares this path with its code on the same weights.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor

from bench.rewards.clip import RewardMLP
from bench.rewards.scorer import ImageScorer, normalise, resize_crop
from bench.rewards.weights import fingerprint, load_checked, load_state_dict, locate_file, locate_folder

REPO = "THUDM/ImageReward"
# The raw MLP output is standardised with these constants of the ImageReward release.
MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_TEXT = 35


def vision_config_of(state: dict[str, Tensor]):
    """The ViT's shape read off the checkpoint (BLIP's ViT uses 64-wide heads and LayerNorm eps 1e-6)."""
    from transformers import BlipVisionConfig

    width, patch = state["blip.visual_encoder.patch_embed.proj.weight"].shape[0::2]
    positions = state["blip.visual_encoder.pos_embed"].shape[1]
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("blip.visual_encoder.blocks."))
    return BlipVisionConfig(hidden_size=width, intermediate_size=state["blip.visual_encoder.blocks.0.mlp.fc1.weight"]
                            .shape[0], num_hidden_layers=depth, num_attention_heads=max(1, width // 64),
                            image_size=round((positions - 1) ** 0.5) * patch, patch_size=patch, layer_norm_eps=1e-6)


VISION_RENAMES = (("patch_embed.proj.", "embeddings.patch_embedding."), ("blocks.", "encoder.layers."),
                  (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."), (".attn.qkv.", ".self_attn.qkv."),
                  (".attn.proj.", ".self_attn.projection."))


def vision_key(key: str) -> str:
    """timm ViT name -> transformers BlipVisionModel name."""
    special = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
    if key in special:
        return special[key]
    for old, new in VISION_RENAMES:
        key = key.replace(old, new)
    return key


def blip_to_hf(state: dict[str, Tensor]) -> tuple[dict, dict, dict]:
    """Split the checkpoint into (vision, text, mlp) state dicts in transformers' layouts."""
    vision, text, mlp = {}, {}, {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            vision[vision_key(key.removeprefix("blip.visual_encoder."))] = value
        elif key.startswith("blip.text_encoder."):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp."):
            mlp[key.removeprefix("mlp.")] = value
    return vision, text, mlp


class ImageReward(ImageScorer):
    """ImageReward v1.0: standardised reward of a BLIP image-text model fine-tuned on 137k human rankings."""

    name, version = "image_reward", "v1.0"

    def __init__(self, vision, text, mlp: RewardMLP, tokenizer, files):
        super().__init__(files)
        self.vision, self.text, self.mlp, self.tokenizer = vision, text, mlp, tokenizer
        self.image_size = vision.config.image_size
        self.freeze()

    @classmethod
    def load(cls, weights: str | None = None) -> ImageReward:
        from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionModel

        path = locate_file(cls.name, REPO, "ImageReward.pt", weights)
        med = json.loads(locate_file(cls.name, REPO, "med_config.json", weights).read_text())
        state = load_state_dict(path)
        vision_state, text_state, mlp_state = blip_to_hf(state)
        vision = BlipVisionModel(vision_config_of(state))
        # BLIP sets the cross-attention width to the ViT's at build time, whatever med_config.json says.
        text_config = BlipTextConfig(**{k: med[k] for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act")}, encoder_hidden_size=vision.config.hidden_size)
        text = BlipTextModel(text_config, add_pooling_layer=False)
        mlp = RewardMLP(text_config.hidden_size)
        # Tensors beyond what each module needs are tolerated (the package's own load is non-strict as well).
        for module, part in ((vision, vision_state), (text, text_state), (mlp, mlp_state)):
            load_checked(module, part, path, allow_extra=True)
        tokenizer = BertTokenizer.from_pretrained(locate_folder(cls.name, "bert-base-uncased", "tokenizer",
                                                                ("vocab.txt",), weights))
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        return cls(vision, text, mlp, tokenizer, fingerprint([path]))

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        pixels = normalise(resize_crop(images, self.image_size)).to(self.vision.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TEXT,
                                return_tensors="pt").to(self.device)
        text = self.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                         encoder_hidden_states=image_tokens,
                         encoder_attention_mask=torch.ones(image_tokens.shape[:-1], dtype=torch.long,
                                                           device=self.device)).last_hidden_state
        return (self.mlp(text[:, 0].to(self.mlp.layers[0].weight.dtype)).float() - MEAN) / STD
