"""The leaderboard app, page by page, on a store of real analytic-world runs and a real sweep."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import optuna
import pytest
from streamlit.testing.v1 import AppTest

from bench.cli import main
from bench.config import build_config
from bench.store import Store
from bench.store.files import read_jsonl
from dashboard.data import inside, plain

from browser import chromium_session
from conftest import ROOT, bench_process, wait_until

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard") / "results"
    small = ["backend.image_size=4", "backend.prompts=4", "backend.hidden=64"]
    for args in (["method=di_pp", "seed=0"], ["method=di_pp", "seed=1"], ["method=kl_rlhf", "seed=0"]):
        assert main(["run", "preset=smoke", f"results.dir={root}", *small, *args]) == 0
    assert main(["run", "preset=smoke", "method=toy_methods:Explodes", f"results.dir={root}", *small]) == 1
    kl_run = next(r["id"] for r in Store(root).rows() if r["method"] == "kl_rlhf" and r["study"] is None)
    di_pp_run = next(r["id"] for r in Store(root).rows() if r["method"] == "di_pp" and r["study"] is None)
    for run_id in (kl_run, di_pp_run):  # two runs under one evaluation protocol, for the prompt browser
        assert main(["eval", f"run={run_id}", "n=8", f"results.dir={root}"]) == 0
    assert main(["sweep", "method=di_pp", "study=tiny", "n_trials=3", "train.steps=30", *small,
                 f"results.dir={root}"]) == 0
    assert main(["sweep", "method=kl_rlhf", "space=reward_vs_nll", "study=front", "n_trials=4", "train.steps=30",
                 *small, f"results.dir={root}"]) == 0
    (root / "runs" / "broken-run").mkdir()
    (root / "runs" / "broken-run" / "run.json").write_text("{not json")
    (root / "runs" / MARKDOWN_NAME).mkdir()  # a folder name that is also markdown: it must show as written
    return root


@pytest.fixture
def app(store, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(store))

    def make(**params):
        at = AppTest.from_file(APP, default_timeout=60)
        for key, value in params.items():
            at.query_params[key] = value
        return at.run()

    return make


def ids(store, **where):
    rows = Store(store).rows()
    return [r["id"] for r in rows if all(r[k] == v for k, v in where.items())]


MARKDOWN_NAME = "[click](javascript:alert(1)) **bold**"


def texts(at, kind):
    return " ".join(str(e.value) for e in getattr(at, kind))


def test_leaderboard_averages_seeds_within_a_protocol_and_keeps_reported_rows_apart(app, store):
    at = app()
    assert not at.exception
    warnings = texts(at, "warning")
    assert plain("skipped run folder broken-run") in warnings
    assert plain(f"skipped run folder {MARKDOWN_NAME}") in warnings and "[click](" not in warnings
    assert "ranked together only when their evaluation protocol matches" in texts(at, "caption")
    measured, reported = at.dataframe[0].value, at.dataframe[-1].value
    assert set(measured["method"]) == {"di_pp", "kl_rlhf"}
    di_pp = measured[measured["method"] == "di_pp"].iloc[0]
    assert di_pp["seeds"] == 2 and "±" in di_pp["reward"]
    assert di_pp["steps"] == build_config(["preset=smoke"]).train.steps
    seeds = ids(store, method="di_pp", study=None, status="finished")
    assert set(di_pp["runs"].split(", ")) == set(seeds)
    assert di_pp["open"] == f"?page=compare&runs={','.join(di_pp['runs'].split(', '))}"  # the seeds side by side
    kl_rlhf = measured[measured["method"] == "kl_rlhf"].iloc[0]
    assert kl_rlhf["open"] == f"?page=run&run={kl_rlhf['runs']}"
    assert set(reported["status"]) == {"reported"} and {"di_star", "di_pp"} <= set(reported["method"])
    evaluated = at.dataframe[1].value
    assert set(evaluated["run"]) == {*ids(store, method="kl_rlhf", study=None), evaluated_di_pp(store)}
    assert set(evaluated["eval"]) == {"analytic-n8-seed0"}
    assert "prompts analytic" in " ".join(str(s.value) for s in at.subheader)
    assert all(r not in json.dumps(measured.to_dict()) for r in ids(store, status="failed"))


def evaluated_di_pp(store) -> str:
    return next(i for i in ids(store, method="di_pp", study=None) if (Store(store).get(i).dir / "evals").exists())


def test_prompt_browser_sorts_prompts_by_the_gap_and_shows_every_runs_images(app, store):
    kl_run, di_pp_run = ids(store, method="kl_rlhf", study=None)[0], evaluated_di_pp(store)
    at = app(page="prompts")
    assert not at.exception
    at.selectbox[1].set_value("reward").run()
    first, second = at.selectbox[2].value, at.selectbox[3].value
    assert {first, second} == {kl_run, di_pp_run}
    means = at.dataframe[0].value
    lines = {r: read_jsonl(Store(store).get(r).dir / "evals" / "analytic-n8-seed0" / "scores.jsonl")
             for r in (kl_run, di_pp_run)}

    def mean(run_id, caption):
        values = [line["reward"] for line in lines[run_id] if line["caption"] == caption]
        return sum(values) / len(values)

    for caption, row in means.iterrows():
        assert row["gap"] == pytest.approx(mean(second, caption) - mean(first, caption), abs=1e-9)
    assert list(means["gap"].abs()) == sorted(means["gap"].abs(), reverse=True)  # where one run wins most, first
    prompt = at.selectbox[4].value
    assert prompt == means.index[0]
    images = [e for e in at.main if e.type == "image"]
    assert len(images) == 2 * 8  # every image of that prompt, from both runs
    shown = sorted(e.proto.imgs[0].caption.split()[1] for e in images)
    assert shown == sorted(f"{line['reward']:.4g}" for r in lines for line in lines[r] if line["caption"] == prompt)


def test_leaderboard_filters_methods_and_sorts(app):
    at = app()
    at.sidebar.multiselect[0].set_value(["kl_rlhf"]).run()
    assert list(at.dataframe[0].value["method"]) == ["kl_rlhf"]
    at.sidebar.multiselect[0].set_value(["di_pp", "kl_rlhf"]).run()
    at.sidebar.selectbox[0].set_value("reward").run()
    rewards = [float(v.split(" ")[0]) for v in at.dataframe[0].value["reward"]]
    assert rewards == sorted(rewards, reverse=True)


def test_run_page_shows_curves_grids_and_per_prompt_scores(app, store):
    run_id = ids(store, method="kl_rlhf", study=None)[0]
    at = app(page="Run", run=run_id)
    assert not at.exception
    assert at.selectbox[0].value == run_id
    kinds = [e.type for e in at.main]
    assert kinds.count("vega_lite_chart") >= 6
    assert "image" in kinds
    assert at.select_slider[0].value == build_config(["preset=smoke"]).train.steps  # the last grid
    captions = Store(store).get(run_id).config["backend"]["prompts"]
    per_prompt = at.table[0].value
    assert len(per_prompt) == captions and per_prompt["caption"].iloc[0] == "a red circle"
    evaluation = at.table[1].value  # the bench eval of this run, with its per-prompt scores
    assert len(evaluation) == captions
    assert "Evaluation analytic-n8-seed0" in " ".join(str(s.value) for s in at.subheader)


def test_compare_page_shows_deltas_against_the_first_run(app, store):
    first, second = ids(store, method="di_pp", study=None, status="finished")
    at = app(page="Compare")
    at.multiselect[0].set_value([first, second]).run()
    table = at.table[0].value
    reward = [json.loads(Store(store).get(i).dir.joinpath("summary.json").read_text())["metrics"]["reward"]
              for i in (first, second)]
    assert float(table.loc["reward", f"Δ {second}"]) == pytest.approx(reward[1] - reward[0], abs=1e-3)
    assert at.query_params["runs"] == f"{first},{second}"  # the address reproduces the view


def test_a_deep_link_opens_the_comparison_with_one_step_for_all_grids(app, store):
    first, second = ids(store, method="di_pp", study=None, status="finished")
    at = app(page="compare", runs=f"{second},{first},no-such-run")
    assert not at.exception
    assert at.multiselect[0].value == [second, first]
    assert "no-such-run" in texts(at, "warning")
    smoke = build_config(["preset=smoke"]).train
    assert at.select_slider[0].value == smoke.steps and len(at.select_slider) == 1  # one slider for all runs
    images = [e for e in at.main if e.type == "image"]
    assert len(images) == 2
    at.select_slider[0].set_value(0).run()
    assert all("step 0" in c.value for c in at.caption if first in c.value or second in c.value)
    assert [e.type for e in at.main].count("vega_lite_chart") >= 3  # curves of both runs on shared axes


def test_sweeps_page_lists_trials_and_maps_the_objective(app):
    at = app(page="sweeps", study="tiny")
    assert not at.exception and at.selectbox[0].value == "tiny"
    trials = at.dataframe[0].value
    assert len(trials) == 3 and set(trials["state"]) == {"complete"}
    headings = " ".join(str(s.value) for s in at.subheader)
    assert f"{plain('kl_star')} over alpha_rew and alpha_cfg" in headings
    assert plain("Parameter importance for kl_star") in headings
    assert [e.type for e in at.main].count("vega_lite_chart") >= 3  # points, filled map, importance bars


def test_sweeps_page_draws_the_pareto_front_of_a_multi_objective_study(app, store):
    import optuna

    at = app(page="Sweeps")
    at.selectbox[0].set_value("front").run()
    assert not at.exception
    trials = at.dataframe[0].value
    study = optuna.load_study(study_name="front", storage=f"sqlite:///{store}/studies.db")
    assert set(trials.loc[trials["pareto"], "trial"]) == {t.number for t in study.best_trials}
    assert "Pareto front" in " ".join(str(s.value) for s in at.subheader)


@pytest.mark.parametrize("bad", ["../../../../etc/passwd", "/etc/passwd", "..", "broken-run/../../x"])
def test_url_parameters_cannot_reach_outside_the_results_folder(app, bad):
    at = app(page="Run", run=bad)
    assert not at.exception
    assert "not a run of this results store" in texts(at, "error")


def test_inside_refuses_paths_and_links_that_leave_the_root(tmp_path):
    root = tmp_path / "results"
    (root / "runs").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    (root / "runs" / "link").symlink_to(secret)
    (root / "runs" / "ok.txt").write_text("yes")
    assert inside(root, "runs", "ok.txt") == root / "runs" / "ok.txt"
    assert inside(root, "runs", "link") is None
    assert inside(root, "..", "secret.txt") is None
    assert inside(root, "/etc/passwd") is None


def chromium() -> str:
    """Debian's chromium, installed here if it is missing and this is a root shell with apt."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Debian's chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True)
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drawn(chart: dict) -> list[int]:
    """How many items each data mark of a chart drew, after checking that none sits at a NaN coordinate or shows
    NaN in its label (Vega draws nothing, or draws at NaN, for a field it cannot read)."""
    for mark in chart["marks"]:
        assert not any("NaN" in g for g in mark["geometry"]), mark
        assert not any("NaN" in label for label in mark["labels"]), mark
    assert "NaN" not in chart["text"], chart["text"]
    return [mark["items"] for mark in chart["marks"]]


def test_served_dashboard_draws_every_chart_in_a_real_browser(store, tmp_path):
    """Every page through `bench dashboard` in headless Chromium, each chart's drawn marks read from its SVG."""
    browser = chromium()
    port = free_port()
    server = bench_process("dashboard", "--results", str(store), "--port", str(port))
    kl_run = ids(store, method="kl_rlhf", study=None)[0]
    pair = ids(store, method="di_pp", study=None, status="finished")
    base = f"http://127.0.0.1:{port}/"
    visits = {  # page: address, text it must show, charts it must hold (the link cells hold their address)
        "leaderboard": (base, ["Leaderboard", "Reported in papers", f"?page=run&run={kl_run}", "?page=compare&runs="],
                        1),
        "frontier": (base + "?page=frontier", ["Reward-divergence frontier"], 1),
        "run": (base + f"?page=run&run={kl_run}", ["Per-prompt scores"], 6),
        "compare": (base + f"?page=compare&runs={','.join(pair)}", ["Evaluation curves"], 3),
        "prompts": (base + "?page=prompts", ["run A", "run B", "(image "], 0),  # the first prompt by gap: any image
        "sweep": (base + "?page=sweeps&study=tiny", ["Parameter importance"], 3),
        "pareto": (base + "?page=sweeps&study=front", ["Pareto front"], 4),
    }

    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, proc=server, timeout=60, interval=0.2)
        with chromium_session(browser, str(tmp_path / "profile")) as open_page:
            pages = {name: open_page(url, expected, charts) for name, (url, expected, charts) in visits.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not listening_on(port)  # bench dashboard is the server itself: nothing is left serving
    for name, page in pages.items():
        (tmp_path / f"{name}.png").write_bytes(page.png)
        assert page.png[:8] == b"\x89PNG\r\n\x1a\n" and len(page.png) > 50_000, name  # a blank page: ~11 kB
        assert all(item in page.text for item in visits[name][1]), (name, page.text[:3000])
        for chart in page.charts:
            assert sum(drawn(chart)) > 0, (name, chart["text"][:200])
    assert {"di_pp", "kl_rlhf"} <= set(pages["leaderboard"].text.split("\n"))  # the grid's cells, drawn
    assert len(pages["leaderboard"].charts) >= 1  # the frontier of the analytic protocol
    assert len(pages["frontier"].charts) == 1 and len(drawn(pages["frontier"].charts[0])) == 2  # bound and runs
    assert len(pages["run"].charts) >= 6 and len(pages["compare"].charts) >= 3
    points, filled, _importance = pages["sweep"].charts
    assert drawn(points) == [3]  # one point a complete trial of study tiny
    assert drawn(filled)[0] >= 1  # cells of the filled map
    front = next(c for c in pages["pareto"].charts if "pareto" in c["text"])  # its legend
    assert drawn(front) == [4]


def listening_on(port: int) -> set[str]:
    """The local addresses with a socket listening on `port`, from the kernel's own tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in list(handle)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if int(hex_port, 16) == port and state == "0A":  # LISTEN
                    if len(address) == 8:
                        found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                    else:
                        found.add(socket.inet_ntop(socket.AF_INET6, b"".join(
                            bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8))))
    return found


def test_streamlit_run_from_the_repository_binds_this_machine_only():
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        addresses = wait_until(lambda: listening_on(port), proc=server, timeout=60, interval=0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert addresses == {"127.0.0.1"}


def test_sweeps_page_lists_studies_from_journal_files_and_any_storage_url(tmp_path, monkeypatch):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    root = tmp_path / "results"
    root.mkdir()
    journal = JournalStorage(JournalFileBackend(str(root / "shared.journal")))
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    for storage, name, value in ((journal, "journaled", 1.0), (elsewhere, "remote", 2.0)):
        study = optuna.create_study(storage=storage, study_name=name)
        study.enqueue_trial({"method.alpha_rew": 1.0})
        trial = study.ask({"method.alpha_rew": optuna.distributions.FloatDistribution(0.1, 10, log=True)})
        study.tell(trial, value)
    (root / "notes.log").write_text("not a journal\n")  # a log file that is not a study is not listed
    monkeypatch.setenv("BENCH_RESULTS", str(root))
    monkeypatch.setenv("BENCH_STORAGES", f"{elsewhere}\npostgresql://someone:secret@127.0.0.1:1/none")
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["page"] = "sweeps"
    at.query_params["study"] = "remote"
    at.run()
    assert not at.exception
    options = at.selectbox[0].options
    assert len(options) == 2 and options[0].startswith("journaled  (journal:") and "elsewhere.db" in options[1]
    assert at.dataframe[0].value["value"].tolist() == [2.0]  # the linked study, from the URL given
    unreachable = texts(at, "warning")
    assert "cannot read studies from postgresql://someone:\\*\\*\\*@127.0.0.1:1/none" in unreachable
    assert "secret" not in unreachable
    at.selectbox[0].set_value(options[0]).run()
    assert at.dataframe[0].value["value"].tolist() == [1.0]
