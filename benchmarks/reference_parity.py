"""Our scorers and FID against the reference packages' own code, on the same random weights.

    python benchmarks/reference_parity.py      # in an environment that also has the reference packages

The reference packages need torchvision, which does not import against the CPU-only torch this project
installs, so this runs in a second environment (CUDA torch works on the CPU):

    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch torchvision open_clip_torch clean-fid \
        "transformers==4.57.6" "huggingface-hub<1" scipy "setuptools<81" fairscale datasets accelerate ftfy regex \
        timm pyyaml && /tmp/refenv/bin/pip install --no-deps image-reward hpsv2x clip-anytorch -e .

Each check saves weights built by the reference code in its released format, loads them through our loader,
and prints the largest score difference twice: on the same preprocessed pixels (the architecture and the
weight conversion) and end to end from PIL images (adds the preprocessing difference: the references resize
with PIL or torchvision, ours inside the autograd graph).
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
PROMPTS = ["a red fox in the snow", "an oil painting of a harbour at dawn", "anime city street at night"]


def pil_images(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(300, 200), (256, 256), (180, 320)]
    # Smooth random pictures: noise upsampled, so that resampling filters differ as on real photographs.
    return [Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3)).astype(np.uint8)).resize((w, h), Image.BICUBIC)
            for w, h in sizes]


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1).float().div(255)


def clip_bpe_files(bpe_gz: Path, folder: Path) -> None:
    """vocab.json and merges.txt for transformers' CLIPTokenizer from open_clip's bpe_simple_vocab_16e6.txt.gz."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    merges = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def hpsv2(root: Path) -> dict:
    import hpsv2.src.open_clip as oc
    from hpsv2.src.open_clip.model import CLIP
    from hpsv2.src.open_clip.transform import image_transform

    from bench.rewards import load_scorer

    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 224, "layers": 3, "width": 128, "head_width": 32,
                                           "patch_size": 14},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3}}
    torch.manual_seed(0)
    model = CLIP(**cfg).eval()
    # open_clip starts projections and some norms at values that hide mistakes (e.g. zero biases); randomise all.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = root / "hpsv2"
    folder.mkdir()
    torch.save({"state_dict": model.state_dict()}, folder / "HPS_v2_compressed.pt")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    clip_bpe_files(Path(oc.__file__).with_name("bpe_simple_vocab_16e6.txt.gz"), folder / "tokenizer")
    ours = load_scorer("hpsv2", str(root))

    preprocess = image_transform(224, is_train=False, resize_longest_max=True)
    images = pil_images(1)
    pixels = torch.stack([preprocess(im) for im in images])
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(oc.tokenize(PROMPTS), normalize=True)
        reference = 100 * (img * txt).sum(-1)
        tokens = ours.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt").input_ids
        theirs = oc.tokenize(PROMPTS)  # pads with 0; transformers pads with end-of-text, which pooling ignores
        same_tokens = bool((tokens == theirs)[theirs > 0].all())
        same_pixels = 100 * (torch.nn.functional.normalize(ours.model.get_image_features(pixel_values=pixels), dim=-1)
                             * ours.text_features(PROMPTS)).sum(-1)
        end_to_end = torch.cat([ours.score(as_tensor(im)[None], [p]) for im, p in zip(images, PROMPTS, strict=True)])
    return {"reference": reference.tolist(), "same pixels": float((same_pixels - reference).abs().max()),
            "end to end": float((end_to_end - reference).abs().max()), "tokens identical up to padding": same_tokens}


def image_reward(root: Path) -> dict:
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    # ImageReward 1.5's med.py imports three helpers that transformers 4.5x moved (ECOSYSTEM.md).
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        setattr(mu, name, getattr(pu, name))
    from transformers import BertTokenizer

    from bench.rewards import load_scorer
    from bench.rewards.image_reward import MEAN, STD

    from random_weights import bert_vocab

    folder = root / "image_reward"
    vocab_size = bert_vocab(folder / "tokenizer")
    original = BertTokenizer.from_pretrained.__func__
    BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: original(cls, folder / "tokenizer"))
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
           "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size + 2,
           "encoder_width": 768, "add_cross_attention": True}
    (folder / "med_config.json").write_text(json.dumps(med))
    from ImageReward.ImageReward import ImageReward

    torch.manual_seed(0)
    model = ImageReward(str(folder / "med_config.json")).eval()  # the released size: BLIP ViT-L/16 + BERT-base
    with torch.no_grad():  # its MLP starts near zero, which would make every score the same constant
        for p in model.mlp.parameters():
            p.normal_(0, 0.1)
    torch.save(model.state_dict(), folder / "ImageReward.pt")
    ours = load_scorer("image_reward", str(root))

    images = pil_images(2)
    results, same_pixels, end_to_end = [], [], []
    with torch.no_grad():
        for im, prompt in zip(images, PROMPTS, strict=True):
            results.append(float(model.score(prompt, im)))
            pixels = model.preprocess(im)[None]
            text = model.blip.tokenizer(prompt, padding="max_length", truncation=True, max_length=35,
                                        return_tensors="pt")
            same_pixels.append(float(model.score_gard(text.input_ids, text.attention_mask, pixels)))
            ours_pixels = ours.vision(pixel_values=pixels).last_hidden_state
            first = ours.text(input_ids=text.input_ids, attention_mask=text.attention_mask,
                              encoder_hidden_states=ours_pixels,
                              encoder_attention_mask=torch.ones(ours_pixels.shape[:-1], dtype=torch.long))
            same_pixels[-1] -= float((ours.mlp(first.last_hidden_state[:, 0]) - MEAN) / STD)
            end_to_end.append(float(ours.score(as_tensor(im)[None], [prompt])) - results[-1])
    return {"reference": results, "same pixels": max(map(abs, same_pixels)), "end to end": max(map(abs, end_to_end))}


def clean_fid(root: Path) -> dict:
    from cleanfid import fid as cfid
    from cleanfid.resize import make_resizer

    from bench.eval import fid as ours
    from bench.provenance import file_sha256

    from random_weights import write_inception

    path = write_inception(root / "inception.pt")
    inception = ours.Inception(path, torch.device("cpu"), pin=file_sha256(path))
    folders = []
    for k, seed in enumerate((3, 4)):
        folder = root / f"images{k}"
        folder.mkdir()
        for i in range(48):
            image = pil_images(seed * 100 + i)[i % 3]
            (image.point(lambda v: v * 0.6) if k else image).save(folder / f"{i:05d}.png")  # a darker second set
        folders.append(folder)
    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    sample = np.asarray(Image.open(folders[0] / "00000.png").convert("RGB"))
    resize_diff = float(np.abs(resize(sample) - ours.prepare(Image.open(folders[0] / "00000.png"))).max())
    theirs = cfid.compute_fid(str(folders[0]), str(folders[1]), mode="clean", num_workers=0, batch_size=16,
                              device=torch.device("cpu"), verbose=False,
                              custom_feat_extractor=lambda x: inception.layers((x - 128) / 128).reshape(len(x), -1))
    feats = [ours.features(ours.image_files(f), inception) for f in folders]
    (mu1, s1), (mu2, s2) = ours.statistics(feats[0]), ours.statistics(feats[1])
    mine = ours.frechet_distance(mu1, s1, mu2, s2)
    return {"clean-fid": float(theirs), "ours": mine, "relative difference": abs(mine - theirs) / abs(theirs),
            "frechet_distance only": abs(mine - float(cfid.frechet_distance(mu1, s1, mu2, s2))),
            "resize max abs difference (0-255 scale)": resize_diff}


def main() -> None:
    torch.set_num_threads(8)
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in (("hpsv2", hpsv2), ("image_reward", image_reward), ("fid", clean_fid)):
            root = Path(tmp) / name
            root.mkdir()
            print(name, json.dumps(check(root), indent=1))


if __name__ == "__main__":
    main()
