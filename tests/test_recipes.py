"""The papers' recipes as presets: every value sourced, every preset a valid run, and the dry run's cost figures
computed from counted FLOPs by the stated formula."""

import re

import pytest
import torch

from bench.cli import main
from bench.config import OUR_PRESETS, PRESET_DIR, build_config
from bench.estimate import GPUS, count, estimate

RECIPES = sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem not in OUR_PRESETS)  # each sources every value


@pytest.fixture(autouse=True)
def no_hub(hub_unreachable):
    """The presets name hub ids; nothing here may load them (the stubbed hub fails any attempt)."""


def test_the_papers_recipes_are_all_there():
    assert RECIPES == ["di_pp_pixart", "di_pp_sd15", "di_star_pixart", "di_star_sd15", "di_star_sdxl", "didr_sdxl",
                       "dmdr_sd35", "dmdr_sdxl"]


@pytest.mark.parametrize("name", RECIPES)
def test_every_value_of_a_recipe_names_its_source_or_says_it_is_ours(name):
    lines = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    tags = {tag for line in header for tag in re.findall(r"\[[^\]]+\]", line)}  # the sources the file defines
    assert tags, f"{name}: no sources in its header"
    for line in lines:
        if line.startswith("#") or not line.strip() or line.rstrip().endswith(":"):
            continue  # comments and section headers
        _, _, comment = line.partition("#")
        cited = [tag for tag in re.findall(r"\[[^\]]+\]", comment) if tag in tags]
        assert cited or "our choice" in comment, f"{name}: no source for '{line.strip()}'"
    assert build_config([f"preset={name}"]).backend.name in ("sd15", "pixart_alpha", "sdxl", "sd3")


def test_di_star_sdxl_is_post_trained_from_dmd2_at_its_own_timestep_with_the_mapped_guidance():
    cfg = build_config(["preset=di_star_sdxl"])
    assert cfg.backend.init == "tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin" and cfg.backend.t_init == 399
    assert cfg.method.alpha_cfg == 8.5  # DI*'s 7.5 in s_c + w (s_c - s_u) is 1 + 7.5 in s_u + w (s_c - s_u)
    assert cfg.backend.resolution == 1024


def test_dmdr_sdxl_shapes_its_rewards_as_dmdr_does():
    """Two hinge-shaped rewards, a cold start and a guidance range, on DMD's own gradient."""
    from bench.rewards import parse_reward

    cfg = build_config(["preset=dmdr_sdxl"])
    assert cfg.method.name == "dmd" and cfg.method.cold_start > 0 and cfg.method.alpha_cfg_max > cfg.method.alpha_cfg
    terms = parse_reward(cfg.reward, ("hpsv2.1", "clip_score"))
    assert set(terms) == {"hpsv2.1", "clip_score"} and all(term.margin is not None for term in terms.values())


def test_a_prompt_encoding_costs_two_flops_a_parameter_a_token():
    """T5-XXL's encoder (4.76B) on PixArt's 120 tokens is about a DiT forward; CLIP-L on 77 tokens is small."""
    pixart = estimate(build_config(["preset=di_pp_pixart"]))
    assert pixart["text_tflops"] == pytest.approx(2 * 4.76e9 * 120 / 1e12)
    assert estimate(build_config(["preset=di_pp_sd15"]))["text_tflops"] == pytest.approx(2 * 123e6 * 77 / 1e12)


def test_sd3_encodes_with_two_clips_and_t5_and_without_t5_saves_its_cost_and_memory():
    """SD3's prompt: CLIP-L and bigG on 77 tokens and T5-XXL's encoder on 256; backend.t5=false drops T5 only."""
    with_t5 = estimate(build_config(["preset=dmdr_sd35"]))
    without = estimate(build_config(["preset=dmdr_sd35", "backend.t5=false"]))
    assert with_t5["text_tflops"] == pytest.approx(2 * ((123e6 + 695e6) * 77 + 4.76e9 * 256) / 1e12)
    assert without["text_tflops"] == pytest.approx(2 * (123e6 + 695e6) * 77 / 1e12)
    assert with_t5["memory_gb"] - without["memory_gb"] == pytest.approx(4 * 4.76e9 / 1e9)  # frozen, fp32
    assert with_t5["denoiser_tflops"] == without["denoiser_tflops"]  # the transformer reads T5's zeros


def test_the_released_architectures_have_their_published_sizes():
    """Counted on the meta device: SD1.5's UNet 860M, PixArt-alpha XL-2 0.6B, SDXL's UNet 2.6B, SD3.5 Medium's
    transformer 2.24B parameters."""
    assert count("sd15", 512).denoiser_params == pytest.approx(860e6, rel=0.01)
    assert count("pixart_alpha", 512).denoiser_params == pytest.approx(611e6, rel=0.01)
    sdxl = count("sdxl", 1024)
    assert sdxl.denoiser_params == pytest.approx(2.567e9, rel=0.01)
    assert count("sdxl", 512).denoiser_flops == pytest.approx(sdxl.denoiser_flops / 4, rel=0.15)  # ~ pixels
    # SD3.5 Medium's MMDiT-X: 2.24B parameters (its released file's 2.47B adds the fixed 384 x 384 position table)
    assert count("sd3", 512).denoiser_params == pytest.approx(2.24e9, rel=0.01)


def test_the_step_cost_follows_its_formula_and_the_hours_the_stated_utilisation():
    base = ["preset=di_star_sd15", "train.steps=1000", "train.batch_size=10"]
    one, two = estimate(build_config([*base, "method.fake_steps=1"])), estimate(build_config([*base,
                                                                                              "method.fake_steps=2"]))
    d = one["denoiser_tflops"]
    t = one["text_tflops"]
    assert two["step_tflops_per_image"] - one["step_tflops_per_image"] == pytest.approx(4 * d + t)  # a fake update
    unguided = estimate(build_config([*base, "method.fake_steps=1", "method.alpha_cfg=1"]))
    assert one["step_tflops_per_image"] - unguided["step_tflops_per_image"] == pytest.approx(2 * d)  # uncond score
    expected = 2 * t + 4 * d + 3 * d + 3 * 2 * d + 2 * one["vae_decode_tflops"] + 2 * one["reward_tflops"]
    assert one["step_tflops_per_image"] == pytest.approx(expected)
    assert one["total_pflops"] == pytest.approx(one["step_tflops_per_image"] * 10_000 / 1000)
    for gpu, (peak, _) in GPUS.items():
        assert one["gpu_hours"][gpu] == pytest.approx(one["total_pflops"] * 1e15 / (peak * 1e12 * one["mfu"]) / 3600)
    lora = estimate(build_config([*base, "backend.lora_gen=16", "backend.lora_fake=16"]))
    assert lora["memory_gb"] < one["memory_gb"] / 2  # Adam state of adapters only


def test_activations_counted_on_the_meta_device_are_those_a_real_backward_keeps():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bench.activations import SavedActivations
    from bench.estimate import saved_bytes

    def peaks(counter):  # 1024 latent pixels at the top: an attention matrix would outweigh everything else
        torch.manual_seed(0)
        unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4,
                                    out_channels=4, cross_attention_dim=8, norm_num_groups=4,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
        vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                            latent_channels=4).requires_grad_(False)
        x, text = torch.randn(1, 4, 32, 32, requires_grad=True), torch.randn(1, 7, 8)
        return [counter(lambda: unet(x, torch.tensor([500]), encoder_hidden_states=text).sample, unet),
                counter(lambda: vae.decode(x).sample, vae)]

    def kept_by_torch(run, module):  # torch's own attention kernel, on real tensors
        with SavedActivations(module) as saved:
            run()
        return saved.peak

    with torch.device("meta"):
        counted = peaks(saved_bytes)
    assert counted == pytest.approx(peaks(kept_by_torch), rel=0.05)


def test_activations_set_the_batch_a_gpu_holds_and_one_decoded_image_at_a_time_holds_more(hub_unreachable):
    base = ["preset=di_star_sd15", "train.batch_size=64"]
    grouped = estimate(build_config(base))
    whole = estimate(build_config([*base, "backend.decode_batch=0"]))
    fp32 = estimate(build_config([*base, "train.precision=fp32"]))
    decoder = count("sd15", 512).act_decode / 1e9
    assert grouped["decoder_group_gb"] == pytest.approx(decoder / 2)  # one bf16 image's decoder activations
    assert whole["activations_gb_per_image"] == pytest.approx(grouped["activations_gb_per_image"] + decoder / 2)
    assert fp32["activations_gb_per_image"] == pytest.approx(2 * grouped["activations_gb_per_image"])
    for gpu, (_, gb) in GPUS.items():
        size = grouped["batch_per_gpu"][gpu]
        used = grouped["memory_gb"] + grouped["decoder_group_gb"] + size * grouped["activations_gb_per_image"]
        assert used <= gb < used + grouped["activations_gb_per_image"]  # the largest batch that fits
        assert whole["batch_per_gpu"][gpu] <= size
    assert whole["batch_per_gpu"]["H100 SXM"] < grouped["batch_per_gpu"]["H100 SXM"]
    assert 2 < grouped["activations_gb_per_image"] < 5  # SD1.5 at 512 px in bf16: measured 0.8 GB a UNet


def test_dry_run_prints_the_configuration_and_costs_and_touches_nothing(tmp_path, capsys, hub_unreachable):
    assert main(["run", "preset=di_star_sdxl", "--dry-run", f"results.dir={tmp_path / 'results'}"]) == 0
    out = capsys.readouterr().out
    assert "init: tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin" in out and "alpha_cfg: 8.5" in out
    assert "sdxl at 1024 px" in out and "H100 SXM" in out and "GPU-hours" in out
    assert "does not fit in 80 GB data-parallel: needs train.parallel=fsdp" in out  # three SDXL UNets, Adam
    assert "with train.parallel=fsdp over 8 GPUs: 29 GB a GPU" in out
    assert not (tmp_path / "results").exists()


def test_fsdp_divides_the_trained_state_by_the_gpus_and_leaves_the_frozen_networks_whole(hub_unreachable):
    full = estimate(build_config(["preset=di_star_sdxl"]))
    params = count("sdxl", 1024).denoiser_params
    trained = (16 + 4 + 16) * params / 1e9  # generator and fake with Adam (16 bytes a weight), the EMA (4)
    assert full["memory_gb"] - full["memory_fsdp_gb"] == pytest.approx(trained * (1 - 1 / 8))
    for gpu in GPUS:
        assert full["batch_per_gpu_fsdp"][gpu] >= full["batch_per_gpu"][gpu]
