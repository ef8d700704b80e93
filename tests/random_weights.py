"""A weights folder with tiny random scorers in the on-disk formats users download (no hub needed).

    DIR/hpsv2/HPS_v2_compressed.pt (+ open_clip_config.json)   open_clip state dict under "state_dict"
    DIR/hpsv2.1/HPS_v2.1_compressed.pt
    DIR/pickscore/model/{config.json, model.safetensors}       transformers CLIPModel folders
    DIR/clip_score/model/...
    DIR/aesthetic/model/... + sac+logos+ava1-l14-linearMSE.pth  CLIP + the MLP head's state dict
    DIR/image_reward/ImageReward.pt + med_config.json            BLIP in timm / med.py key names
    DIR/*/tokenizer/                                             CLIP BPE (vocab.json, merges.txt) or BERT vocab.txt

The open_clip and BLIP checkpoints are written with their own key names, spelled out here independently of the
converters in bench.rewards; `benchmarks/reference_parity.py` checks both layouts against the packages' code.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from bench.teach import clip_vocabulary

LETTERS = string.ascii_lowercase
TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                  "text_cfg": {"context_length": 16, "vocab_size": 2 * len(LETTERS) + 2, "width": 32, "heads": 2,
                               "layers": 2}}


def bert_vocab(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *("##" + c for c in LETTERS)]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return len(tokens)


def tiny_clip(seed: int):
    from transformers import CLIPModel

    from bench.rewards.clip import hf_config_of

    torch.manual_seed(seed)
    return CLIPModel(hf_config_of(TINY_OPEN_CLIP)).eval()


def to_open_clip(model) -> dict:
    """transformers CLIPModel -> open_clip key names (q/k/v fused into in_proj, projections transposed)."""
    sd = model.state_dict()
    out = {"logit_scale": sd["logit_scale"], "visual.proj": sd["visual_projection.weight"].t(),
           "text_projection": sd["text_projection.weight"].t(),
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"]}
    norms = (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
             ("ln_final", "text_model.final_layer_norm"))
    for ours, theirs in norms:
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    for ours, theirs in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        for i in range(2):  # both towers of TINY_OPEN_CLIP have two layers
            o, t = f"{ours}.resblocks.{i}.", f"{theirs}.layers.{i}."
            for p in ("weight", "bias"):
                out[f"{o}attn.in_proj_{p}"] = torch.cat([sd[f"{t}self_attn.{n}_proj.{p}"] for n in "qkv"])
                for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                    out[f"{o}{a}.{p}"] = sd[f"{t}{b}.{p}"]
    return out


def tiny_blip(vocab: int, seed: int):
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=1, image_size=32, patch_size=8, layer_norm_eps=1e-6))
    text = BlipTextModel(BlipTextConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=40, encoder_hidden_size=64),
                         add_pooling_layer=False)
    return vision.eval(), text.eval()


def timm_name(key: str) -> str:
    """transformers BlipVisionModel name -> the timm ViT name in BLIP checkpoints."""
    fixed = {"embeddings.class_embedding": "cls_token", "embeddings.position_embedding": "pos_embed",
             "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias",
             "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
             "embeddings.patch_embedding.bias": "patch_embed.proj.bias"}
    if key in fixed:
        return fixed[key]
    _, _, i, block, *rest = key.split(".")  # encoder.layers.I.BLOCK...
    block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp": "mlp"}.get(block, block)
    if block == "self_attn":
        rest = ["qkv" if rest[0] == "qkv" else "proj", rest[1]]
        block = "attn"
    return ".".join(["blocks", i, block, *rest])


def write_weights(root: Path, seed: int = 0) -> Path:
    from bench.rewards.clip import RewardMLP

    for offset, name, file in ((0, "hpsv2", "HPS_v2_compressed.pt"), (1, "hpsv2.1", "HPS_v2.1_compressed.pt")):
        folder = root / name
        folder.mkdir(parents=True)
        torch.save({"state_dict": to_open_clip(tiny_clip(seed + offset))}, folder / file)
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
        clip_vocabulary(folder / "tokenizer")
    for offset, name in ((2, "pickscore"), (3, "clip_score"), (4, "aesthetic")):
        tiny_clip(seed + offset).save_pretrained(root / name / "model", safe_serialization=True)
        clip_vocabulary(root / name / "tokenizer")
    torch.manual_seed(seed + 5)
    head = RewardMLP(TINY_OPEN_CLIP["embed_dim"]).state_dict()
    torch.save(head, root / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth")

    folder = root / "image_reward"
    vocab = bert_vocab(folder / "tokenizer") + 2  # ImageReward adds [DEC] and [ENC]
    vision, text = tiny_blip(vocab, seed + 6)
    mlp = RewardMLP(text.config.hidden_size)
    state = {f"blip.visual_encoder.{timm_name(k)}": v for k, v in vision.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
    state["blip.vision_proj.weight"] = torch.zeros(4, 64)  # a BLIP head the scorer does not use
    torch.save(state, folder / "ImageReward.pt")  # a bare state dict, as released
    (folder / "med_config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 32, "intermediate_size": 64,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
        "num_hidden_layers": 2, "vocab_size": vocab, "encoder_width": 64, "add_cross_attention": True}))
    return root


class TinyInception(torch.nn.Module):
    """The interface of clean-fid's Inception file: a scripted module whose .layers maps 299 x 299 to features."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 9, stride=8), torch.nn.Tanh(),
                                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def write_inception(path: Path, seed: int = 0) -> Path:
    import warnings

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # TorchScript is deprecated; clean-fid's weights still come in it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyInception()).save(str(path))
    return path
