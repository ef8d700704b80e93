"""Prompt-set loaders on fixture files written here, and seeded subsets."""

import json

import pytest

from bench.cli import main
from bench.errors import UsageError
from bench.prompts import HPS_STYLES, builtin, load_prompt_set


@pytest.fixture
def coco_json(tmp_path):
    annotations = [{"id": 10 + i, "image_id": i // 2, "caption": f"  a photo   of thing {i} "} for i in range(40)]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": [{"id": i} for i in range(5)], "annotations": annotations[::-1]}))
    return path


def test_coco_annotation_json_in_a_stable_order_with_normalised_spaces(coco_json):
    prompts = load_prompt_set(f"coco:{coco_json}")
    assert prompts.prompts == tuple(f"a photo of thing {i}" for i in range(40))


def test_coco_one_caption_a_line(tmp_path):
    path = tmp_path / "coco30k.txt"
    path.write_text("first caption\n\nsecond caption\n")
    assert load_prompt_set(f"coco:{path}").prompts == ("first caption", "second caption")


def test_same_seed_same_subset_and_another_seed_another(coco_json):
    full = load_prompt_set(f"coco:{coco_json}")
    a, b, c = full.subset(10, seed=1), full.subset(10, seed=1), full.subset(10, seed=2)
    assert a == b and a.prompts != c.prompts and len(a.prompts) == 10
    assert a.version != full.version and a.name == "coco[n=10,seed=1]"
    assert list(a.prompts) == sorted(a.prompts, key=full.prompts.index)  # original order kept


def test_hps_v2_reads_the_four_style_files(tmp_path):
    for style in HPS_STYLES:
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt {i}" for i in range(3)]))
    prompts = load_prompt_set(f"hps_v2:{tmp_path}")
    assert len(prompts.prompts) == 12
    assert prompts.styles[3] == "concept-art" and prompts.prompts[3] == "concept-art prompt 0"


def test_missing_hps_style_file_names_the_file_and_the_key(tmp_path):
    expected = r"HPSv2 style file anime.json not found at .*; point to it with prompts=hps_v2:PATH"
    with pytest.raises(UsageError, match=expected):
        load_prompt_set(f"hps_v2:{tmp_path}")


def test_parti_tsv(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    rows = ["Prompt\tCategory\tChallenge\tNote", "bond\tAbstract\tBasic\t", "a cube made of brick\tArtifacts\tBasic\t"]
    path.write_text("\n".join(rows) + "\n")
    assert load_prompt_set(f"parti:{path}").prompts == ("bond", "a cube made of brick")


def test_builtin_set_has_sixteen_distinct_prompts_in_each_style():
    prompts = builtin()
    assert len(set(prompts.prompts)) == len(prompts.prompts) >= 64
    assert all(prompts.styles.count(style) >= 16 for style in HPS_STYLES)


def test_cli_prints_a_seeded_subset(capsys):
    assert main(["prompts", "builtin", "n=5", "seed=3", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompts"] == list(builtin().subset(5, 3).prompts)
    assert main(["prompts", "cocoa:x.json"]) == 2
    assert "unknown prompt set 'cocoa'; did you mean 'coco'?" in capsys.readouterr().err
