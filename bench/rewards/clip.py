"""CLIP-family scorers: HPSv2 (v2.0, v2.1), PickScore, CLIP score and the LAION aesthetic predictor.

All run on transformers' CLIPModel. HPSv2 ships open_clip checkpoints, whose layout `open_clip_to_hf`
rewrites into CLIPModel's (same mathematics: fused q/k/v split in three, projections transposed). This keeps
open_clip and torchvision out of the environment: torchvision has no CPU build that imports against the
CPU-only torch (ECOSYSTEM.md), and `benchmarks/reference_parity.py` compares our numbers with open_clip's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from bench.rewards.scorer import ImageScorer, normalise, resize_crop, resize_pad
from bench.rewards.weights import fingerprint, load_checked, load_state_dict, locate_file, locate_folder

TOKENIZER_FILES = ("vocab.json", "merges.txt")
MODEL_FILES = ("config.json", "model.safetensors")
LAION_H14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OPENAI_L14 = "openai/clip-vit-large-patch14"

# open_clip's model config of ViT-H-14 (its model_configs/ViT-H-14.json), used when no open_clip_config.json
# lies beside the checkpoint.
VIT_H_14 = {"embed_dim": 1024,
            "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}


def hf_config_of(model_cfg: dict):
    """transformers' CLIPConfig for an open_clip model config (defaults as in open_clip)."""
    from transformers import CLIPConfig

    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    ratio = vision.get("mlp_ratio", 4.0)
    return CLIPConfig(
        projection_dim=model_cfg["embed_dim"],
        vision_config={"hidden_size": vision["width"], "intermediate_size": int(vision["width"] * ratio),
                       "num_hidden_layers": vision["layers"], "patch_size": vision["patch_size"],
                       "num_attention_heads": vision["width"] // vision.get("head_width", 64),
                       "image_size": vision["image_size"], "hidden_act": act, "layer_norm_eps": 1e-5},
        # eos_token_id=2 selects transformers' legacy pooling at argmax(input_ids), which is open_clip's.
        text_config={"vocab_size": text["vocab_size"], "hidden_size": text["width"],
                     "intermediate_size": int(text["width"] * text.get("mlp_ratio", 4.0)),
                     "num_hidden_layers": text["layers"], "num_attention_heads": text.get("heads", 8),
                     "max_position_embeddings": text["context_length"], "hidden_act": act,
                     "layer_norm_eps": 1e-5, "eos_token_id": 2})


def open_clip_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an open_clip CLIP state dict into transformers' CLIPModel layout."""
    out = {"logit_scale": state["logit_scale"],
           "visual_projection.weight": state["visual.proj"].t(),
           "text_projection.weight": state["text_projection"].t(),
           "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
           "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": state["positional_embedding"]}
    for src, dst in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                     ("ln_final", "text_model.final_layer_norm")):
        out[f"{dst}.weight"], out[f"{dst}.bias"] = state[f"{src}.weight"], state[f"{src}.bias"]
    for tower, dst in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        prefix = f"{tower}.resblocks."
        count = 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))
        for i in range(count):
            s, d = f"{tower}.resblocks.{i}.", f"{dst}.layers.{i}."
            for name, (w, b) in zip(("q", "k", "v"), zip(state[s + "attn.in_proj_weight"].chunk(3),
                                                          state[s + "attn.in_proj_bias"].chunk(3), strict=True),
                                    strict=True):
                out[f"{d}self_attn.{name}_proj.weight"], out[f"{d}self_attn.{name}_proj.bias"] = w, b
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{d}{b}.weight"], out[f"{d}{b}.bias"] = state[f"{s}{a}.weight"], state[f"{s}{a}.bias"]
    return out


class RewardMLP(nn.Module):
    """The 768-1024-128-64-16-1 head of the LAION aesthetic predictor and of ImageReward (keys layers.N)."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(-1)


class ClipScorer(ImageScorer):
    """Shared body: a CLIPModel, its tokenizer, and cosine similarity of L2-normalised embeddings."""

    transform = staticmethod(resize_crop)

    def __init__(self, model, tokenizer, files: list[Path]):
        super().__init__(fingerprint(files))
        self.model, self.tokenizer = model, tokenizer
        self.image_size = model.config.vision_config.image_size
        self.freeze()

    def image_features(self, images: Tensor) -> Tensor:
        pixels = normalise(self.transform(images, self.image_size))
        return F.normalize(self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)), dim=-1)

    def text_features(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.model.config.text_config.max_position_embeddings)
        return F.normalize(self.model.get_text_features(input_ids=tokens.input_ids.to(self.device)), dim=-1)

    def cosine(self, images: Tensor, prompts: list[str]) -> Tensor:
        return (self.image_features(images) * self.text_features(prompts)).sum(-1).float()


def load_tokenizer(scorer: str, repo: str, subfolder: str, weights: str | None):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(locate_folder(scorer, repo, subfolder, TOKENIZER_FILES, weights))


def load_clip_model(scorer: str, repo: str, weights: str | None):
    from transformers import CLIPModel

    folder = locate_folder(scorer, repo, "model", MODEL_FILES, weights)
    return CLIPModel.from_pretrained(folder, use_safetensors=True), folder / "model.safetensors"


class HPSv2(ClipScorer):
    """Human Preference Score v2: 100 x cosine on open_clip ViT-H-14 fine-tuned on HPDv2.

    Images are resized on the longer side and padded to a square, as in HPSv2's evaluation. v2.0 and v2.1
    are different checkpoints whose numbers are not comparable; the version is recorded with each score.
    """

    name, version, checkpoint = "hpsv2", "2.0", "HPS_v2_compressed.pt"
    transform = staticmethod(resize_pad)

    @classmethod
    def load(cls, weights: str | None = None) -> HPSv2:
        path = locate_file(cls.name, "xswu/HPSv2", cls.checkpoint, weights)  # a missing file is said before imports
        from transformers import CLIPModel

        arch = path.with_name("open_clip_config.json")
        model_cfg = json.loads(arch.read_text())["model_cfg"] if arch.is_file() else VIT_H_14
        model = CLIPModel(hf_config_of(model_cfg))
        load_checked(model, open_clip_to_hf(load_state_dict(path)), path)
        return cls(model, load_tokenizer(cls.name, LAION_H14, "tokenizer", weights), [path])

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        return 100 * self.cosine(images, prompts)


class HPSv21(HPSv2):
    name, version, checkpoint = "hpsv2.1", "2.1", "HPS_v2.1_compressed.pt"


class PickScore(ClipScorer):
    """PickScore v1: logit_scale.exp() x cosine on a CLIP-H fine-tuned on Pick-a-Pic (about 20 to 23)."""

    name, version = "pickscore", "v1"

    @classmethod
    def load(cls, weights: str | None = None) -> PickScore:
        model, file = load_clip_model(cls.name, "yuvalkirstain/PickScore_v1", weights)
        return cls(model, load_tokenizer(cls.name, LAION_H14, "tokenizer", weights), [file])

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.model.logit_scale.exp().float() * self.cosine(images, prompts)


class ClipScore(ClipScorer):
    """CLIP score as torchmetrics defines it: max(100 x cosine, 0) with OpenAI CLIP ViT-L/14."""

    name, version = "clip_score", "openai-l14"

    @classmethod
    def load(cls, weights: str | None = None) -> ClipScore:
        model, file = load_clip_model(cls.name, OPENAI_L14, weights)
        return cls(model, load_tokenizer(cls.name, OPENAI_L14, "tokenizer", weights), [file])

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        return (100 * self.cosine(images, prompts)).clamp(min=0)


class Aesthetic(ClipScorer):
    """LAION aesthetic predictor v2: an MLP on the L2-normalised CLIP ViT-L/14 image embedding (prompt-free)."""

    name, version, head = "aesthetic", "v2-sac+logos+ava1-l14-linearMSE", "sac+logos+ava1-l14-linearMSE.pth"

    def __init__(self, model, mlp: RewardMLP, files: list[Path]):
        super().__init__(model, None, files)
        self.mlp = mlp.requires_grad_(False).eval()

    @classmethod
    def load(cls, weights: str | None = None) -> Aesthetic:
        model, file = load_clip_model(cls.name, OPENAI_L14, weights)
        head = locate_file(cls.name, "camenduru/improved-aesthetic-predictor", cls.head, weights)
        mlp = RewardMLP(model.config.projection_dim)
        mlp.load_state_dict(load_state_dict(head))
        return cls(model, mlp, [file, head])

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.mlp(self.image_features(images).to(self.mlp.layers[0].weight.dtype)).float()
