"""The configuration is typed, layered and saved; the store is atomic, indexed and rebuildable."""

import json

import yaml

from bench.cli import main
from bench.config import TrainConfig, build_config, config_from_dict, leaf_fields
from bench.store import Store

from conftest import bench


def test_layers_default_then_preset_then_command_line():
    cfg = build_config(["preset=smoke", "train.steps=77", "method=di_pp", "method.alpha_cfg=2.5"])
    assert cfg.train.steps == 77          # command line beats preset
    assert cfg.train.batch_size == 64     # preset beats default
    assert cfg.train.lr_gen == TrainConfig().lr_gen  # default
    assert cfg.method.name == "di_pp" and cfg.method.alpha_cfg == 2.5


def test_method_defaults_differ_where_the_mathematics_does():
    kl, pp = build_config(["method=kl_rlhf"]).method, build_config(["method=di_pp"]).method
    assert (kl.time, kl.weighting, kl.fake_steps) == ("point", "denoiser", 1)
    assert (pp.time, pp.weighting, pp.fake_steps) == ("uniform", "denoiser", 1)


def test_saved_config_rebuilds_the_same_run():
    cfg = build_config(["method=di_star", "method.c=0.5", "backend.image_size=4", "seed=3"])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_help_lists_every_key_with_its_default(capsys):
    assert main(["run", "--help", "method=di_star"]) == 0
    out = capsys.readouterr().out
    for key, _, f, _ in leaf_fields(build_config(["method=di_star"])):
        assert key in out and f.metadata["help"] in out


def test_results_dir_from_environment_and_key(tmp_path, capsys):
    env_dir, key_dir = tmp_path / "env", tmp_path / "key"
    bench("run", "preset=smoke", "train.steps=10", "eval.grid=false", results=env_dir, check=True)
    assert len(Store(env_dir).rows()) == 1
    assert main(["run", "preset=smoke", "train.steps=10", f"results.dir={key_dir}"]) == 0
    run_id = Store(key_dir).rows()[0]["id"]
    out = capsys.readouterr().out
    assert run_id in out and str(key_dir) in out
    assert main(["runs", "show", run_id, "--json", f"results.dir={key_dir}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["info"]["status"] == "finished"
    assert shown["config"]["train"]["steps"] == 10
    assert set(shown["summary"]["provenance"]) >= {"git", "packages", "config_sha256", "python"}


def lose_index(store):
    for suffix in ("", "-wal", "-shm"):
        store.db_path.with_name(store.db_path.name + suffix).unlink(missing_ok=True)


def test_run_folder_holds_everything_and_the_index_rebuilds(results):
    assert main(["run", "preset=smoke", f"results.dir={results}"]) == 0
    store = Store(results)
    run = store.get(store.rows()[0]["id"])
    names = {p.name for p in run.dir.iterdir()}
    # .writer.lock stays: unlinking a flock file lets a second writer lock a fresh inode while the first holds the old
    assert names == {"config.yaml", "run.json", "metrics.jsonl", "summary.json", "checkpoints", "samples",
                     ".writer.lock"}
    smoke = build_config(["preset=smoke"]).train
    evaluated = range(0, smoke.steps + 1, smoke.eval_every)
    assert sorted(p.name for p in (run.dir / "samples").iterdir()) == [f"step_{s:06d}.png" for s in evaluated]
    assert not list(run.dir.rglob("*.tmp"))
    kinds = {r["kind"] for r in run.records()}
    assert kinds == {"train", "eval"}
    lose_index(store)
    assert store.reindex() == 1
    assert store.rows()[0]["status"] == "finished"
    lose_index(store)
    assert main(["runs", "reindex", f"results.dir={results}"]) == 0
    assert [r["id"] for r in store.rows()] == [run.id]


def test_a_cut_log_line_is_ignored(results):
    assert main(["run", "preset=smoke", "train.steps=10", f"results.dir={results}"]) == 0
    run = Store(results).latest()
    count = len(run.records())
    with open(run.dir / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "st')
    assert len(run.records()) == count
