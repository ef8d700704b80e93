"""`bench`: the command line. Heavy imports happen inside commands so that help answers at once."""

from __future__ import annotations

import json
import os
import sys
import warnings

from bench.errors import UsageError, did_you_mean

USAGE = """usage: bench <command> [key=value ...]

Commands:
  run        train a one-step generator with an alignment method    bench run method=di_star
  runs       list stored runs, or show one                          bench runs list | bench runs show ID
  sweep      Optuna study over alpha_rew, alpha_cfg and any key     bench sweep method=di_star n_trials=12
  eval       score a run on a prompt set with fixed seeds           bench eval run=ID n=64
  prompts    show a prompt set: size, version, a seeded subset      bench prompts coco:captions.json n=100
  teach      a family's tiny teacher on an exact mixture (a world)  bench teach family=sd15 out=DIR
  dashboard  the Streamlit leaderboard on 127.0.0.1                 bench dashboard [--port 8501]

Every command takes results.dir=PATH (or the environment variable BENCH_RESULTS) to pick the results store.
`bench COMMAND --help` explains a command and lists its keys."""

RESUME_KEYS = ("resume", "results.dir", "device")


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings meant for the user (a rebuilt index) as one line; any other warning as Python shows it."""
    from bench.store.runs import StoreWarning

    if issubclass(category, StoreWarning):
        print(f"bench: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.showwarning = show_warning
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    commands = {"run": cmd_run, "runs": cmd_runs, "eval": cmd_eval, "prompts": cmd_prompts, "teach": cmd_teach,
                "dashboard": cmd_dashboard}
    name, args = argv[0], argv[1:]
    try:
        if name not in commands:
            commands |= plugin_commands()  # read from the installed metadata only when needed
        if name not in commands:
            raise UsageError(f"unknown command '{name}'{did_you_mean(name, commands)}")
        return commands[name](args)
    except UsageError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bench runs list | head` closed the pipe: nothing left to say to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in args)


def show_progress() -> bool:
    """Progress bars on a terminal; in logs (CI, cluster jobs) only when asked for with BENCH_PROGRESS=1."""
    return sys.stderr.isatty() or os.environ.get("BENCH_PROGRESS") == "1"


def report_seconds() -> float | None:
    """Seconds between progress lines when no bar is shown (BENCH_REPORT_SECONDS, default 30; 0 for none)."""
    if show_progress():
        return None
    text = os.environ.get("BENCH_REPORT_SECONDS", "30")
    try:
        return float(text) or None
    except ValueError:
        raise UsageError(f"BENCH_REPORT_SECONDS must be a number of seconds, got '{text}'") from None


def whole_number(key: str, text: str, low: int = 0) -> int:
    # isdigit() alone accepts '²' and other Unicode digits that int() refuses.
    if not (text.isascii() and text.isdigit()) or int(text) < low:
        raise UsageError(f"{key} must be a whole number of at least {low}, got '{text}'")
    return int(text)


def store_from(args: list[str]):
    """The results store named by results.dir=PATH among `args`, and the remaining arguments."""
    from bench.store import Store, default_root

    root, rest = default_root(), []
    for arg in args:
        if arg.startswith("results.dir="):
            root = arg.partition("=")[2]
        else:
            rest.append(arg)
    return Store(root), rest


# -- bench run --------------------------------------------------------------------------------------------


def cmd_run(args: list[str]) -> int:
    from bench.config import build_config, config_from_dict, help_text, split_overrides
    from bench.store import Store

    if wants_help(args):
        chosen = dict(a.partition("=")[::2] for a in args if a.startswith(("method=", "backend=")))
        print(help_text(chosen.get("method", "di_star"), chosen.get("backend", "analytic")))
        return 0
    if "--dry-run" in args:
        return dry_run([a for a in args if a != "--dry-run"])
    cfg = build_config(args)
    store = Store(cfg.results.dir)
    if cfg.resume:
        extra = [key for key, _ in split_overrides(args) if key not in RESUME_KEYS]
        if extra:
            raise UsageError(
                f"resume={cfg.resume} continues a run with its saved configuration, so {', '.join(extra)} "
                "cannot change; drop them, or start a new run without resume="
            )
        run = store.latest() if cfg.resume == "latest" else store.get(cfg.resume)
        if run.info["status"] == "finished":
            raise UsageError(f"run {run.id} has already finished; nothing to resume")
        with writer(run, main_process()):  # taken first: a second resume of a live run stops here
            device = cfg.device
            cfg = config_from_dict(run.config)
            cfg.results.dir, cfg.device = str(store.root), device
            check_device(cfg)
            check_shards(cfg, run)
            trainer = new_trainer(cfg, None)

            def reopen():
                run.update(status="running", message="")
                return run

            trainer.attach(reopen)
            return train_run(trainer)
    check_device(cfg)
    # Models and reward weights load before the run exists, so a missing file leaves no empty run behind.
    trainer = new_trainer(cfg, None)
    trainer.attach(lambda: store.create(cfg.to_dict()))
    with writer(trainer.run, trainer.main):
        return train_run(trainer)


def check_shards(cfg, run) -> None:
    """A sharded run resumes under the number of processes that wrote its checkpoint's shards."""
    from bench.processes import process_state
    from bench.train import checkpoint

    folder = checkpoint.last_checkpoint(run)
    if cfg.train.parallel == "fsdp" and folder is not None:
        checkpoint.check_processes(folder, process_state().num_processes)


def main_process() -> bool:
    from bench.processes import process_state

    return process_state().is_main_process


def writer(run, main: bool):
    """The run's writer lock, held by the process that writes to the store (one, also under accelerate)."""
    import contextlib

    return run.writing() if main else contextlib.nullcontext()


def check_device(cfg) -> None:
    import re

    import torch

    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.device):
        raise UsageError(f"device={cfg.device} is not a torch device; use cpu, cuda, cuda:N or auto")
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() and cfg.backend.name != "analytic" else "cpu"
    if cfg.backend.name == "analytic" and cfg.device != "cpu":
        raise UsageError("the analytic world runs on the CPU; use device=cpu (or device=auto)")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={cfg.device} but CUDA is not available on this machine; use device=cpu")


def new_trainer(cfg, run):
    from bench.train.trainer import Trainer

    return Trainer(cfg, run, progress=show_progress(), report_every=report_seconds())


def sigterm_as_ctrl_c() -> None:
    """A cluster's stop (SIGTERM) handled as a Ctrl-C: a run is marked interrupted, a sweep re-queues its trial."""
    import signal

    def terminated(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)


def train_run(trainer) -> int:
    import contextlib

    from bench.train.trainer import Diverged

    run, main = trainer.run, trainer.main  # only the main process writes to the store and prints
    sigterm_as_ctrl_c()
    try:
        summary = trainer.fit()
    except Diverged as err:
        if main:
            run.fail(str(err))
            print(f"bench: run {run.id} failed: {err}\n  folder: {run.dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if main:
            run.update(status="interrupted", message=f"{err or 'Ctrl-C'} at step {trainer.step}")
            print(f"\nbench: run {run.id} interrupted; continue it with: bench run resume={run.id}", file=sys.stderr)
        return 130
    except Exception as err:
        if main:
            with contextlib.suppress(OSError):  # a full disk may refuse this too; the lock then says interrupted
                run.fail(f"{type(err).__name__}: {err}")
        if isinstance(err, OSError):  # the machine's fault, not ours: one line
            print(f"bench: run {run.id} failed: {err}\n  folder: {run.dir}", file=sys.stderr)
            return 1
        raise
    if main:
        run.finish(summary)
        print(report(summary, run))
    return 0


def report(summary: dict, run) -> str:
    from bench.eval import METRIC_LABELS, METRICS

    lines = [f"run {run.id} finished: {summary['steps']} steps in {summary['wall_s']:.1f} s ({summary['method']}, "
             f"reward {summary['reward']})"]
    optimum = summary.get("optimum") or {}
    width = max(len(METRIC_LABELS[key]) for key in METRICS) + 2
    lines.append(f"  {'metric':<{width}}{'start':>12}{'end':>12}{'KL optimum p*':>15}")
    for key in METRICS:
        if key in summary["metrics"]:
            target = f"{optimum[key]:>15.4g}" if key in optimum else ""
            lines.append(f"  {METRIC_LABELS[key]:<{width}}{summary['initial'][key]:>12.4g}"
                         f"{summary['metrics'][key]:>12.4g}{target}")
    if optimum and not summary.get("aims_at_p_star", summary["method"] == "kl_rlhf"):
        lines.append(f"  p* ~ p_ref exp(alpha_rew r) is the optimum of KL-RLHF, not of {summary['method']}: distances "
                     "to it say how far from that law a run ends, not how well its own objective is met.")
    lines.append(f"  folder: {run.dir}")
    return "\n".join(lines)


# -- bench runs -------------------------------------------------------------------------------------------


RUNS_USAGE = """usage: bench runs list [--json] [status=S] [method=M] [results.dir=PATH]
       bench runs show RUN_ID [--json] [results.dir=PATH]
       bench runs reindex [results.dir=PATH]      rebuild the index from the run folders
       bench runs export RUN_ID... --to tensorboard|mlflow|wandb|trackio  send finished runs to a tracker"""


def dry_run(args: list[str]) -> int:
    """The resolved configuration and what the run would cost; nothing is loaded or written."""
    import yaml

    from bench.config import build_config
    from bench.estimate import report

    cfg = build_config(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    print(report(cfg))
    return 0


def cmd_runs(args: list[str]) -> int:
    if wants_help(args) or not args:
        print(RUNS_USAGE)
        return 0
    from bench.store.runs import STATUSES

    store, args = store_from(args)
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    action, rest = args[0], args[1:]
    if action == "list":
        filters = {}
        for arg in rest:
            key, sep, value = arg.partition("=")
            if not sep or key not in ("status", "method", "backend", "study"):
                raise UsageError(f"bench runs list takes status=, method=, backend= or study=, got '{arg}'")
            filters[key] = value
        if "status" in filters and filters["status"] not in STATUSES:
            raise UsageError(f"status={filters['status']} is not a run status; use one of {', '.join(STATUSES)}")
        where = " AND ".join(f"{key} = ?" for key in filters)
        rows = store.rows(f"WHERE {where}" if where else "", tuple(filters.values()))
        for row in rows:
            row["config"] = json.loads(row["config"])
            row["summary"] = json.loads(row["summary"]) if row["summary"] else None
        print(json.dumps(rows, indent=2) if as_json else runs_table(rows))
        return 0
    if action == "show":
        if len(rest) != 1:
            raise UsageError("bench runs show takes one run id (bench runs list shows them)")
        run = store.get(rest[0])
        data = {"info": run.info, "config": run.config, "summary": run.summary}
        if as_json:
            print(json.dumps(data, indent=2))
        else:
            print(show_run(data))
        return 0
    if action == "reindex":
        print(f"indexed {store.reindex()} runs in {store.root}")
        return 0
    if action == "export":
        from bench.config import flatten
        from bench.train.trackers import export, parse_trackers

        at = rest.index("--to") if "--to" in rest else len(rest)
        names, ids = parse_trackers(" ".join(rest[at + 1:at + 2])), rest[:at] + rest[at + 2:]
        if not ids or not names:
            raise UsageError("bench runs export takes run ids and --to TRACKER (tensorboard, mlflow, wandb, trackio)")
        for run in [store.get(run_id) for run_id in ids]:  # every id checked before anything is written
            print(export(run, names, flatten(run.config)))
        return 0
    raise UsageError(f"unknown action 'runs {action}'{did_you_mean(action, ['list', 'show', 'reindex', 'export'])}")


def runs_table(rows: list[dict]) -> str:
    if not rows:
        return "no runs yet: start one with bench run"
    lines = [f"{'id':<36}{'status':<10}{'method':<10}{'reward':<14}{'steps':>7}{'final reward':>14}{'coverage':>10}"]
    for row in rows:
        metrics = (row["summary"] or {}).get("metrics", {})
        final = f"{metrics['reward']:.4g}" if "reward" in metrics else "-"
        coverage = f"{metrics['coverage']:.2f}" if "coverage" in metrics else "-"
        steps = row["config"]["train"]["steps"]
        lines.append(f"{row['id']:<36}{row['status']:<10}{row['method']:<10}{row['reward']:<14}{steps:>7}"
                     f"{final:>14}{coverage:>10}")
    return "\n".join(lines)


def show_run(data: dict) -> str:
    info, summary = data["info"], data["summary"]
    lines = [f"run {info['id']}  status {info['status']}  created {info['created']}"]
    if info.get("message"):
        lines.append(f"  message: {info['message']}")
    lines.append("config:")
    for section, values in data["config"].items():
        if isinstance(values, dict):
            lines.append(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        else:
            lines.append(f"  {section}: {values}")
    if summary:
        lines.append("metrics (start -> end):")
        for key, value in summary["metrics"].items():
            lines.append(f"  {key:<10}{summary['initial'][key]:>12.4g} -> {value:.4g}")
    return "\n".join(lines)


def plugin_commands() -> dict:
    """Commands other packages add (`bench sweep` is the sweeps package's), found through the `bench.commands`
    entry points: the core never imports its outer layers, they import it."""
    from importlib.metadata import entry_points

    def loader(point):
        return lambda args: point.load()(args)

    return {point.name: loader(point) for point in entry_points(group="bench.commands")}


DASHBOARD_USAGE = """usage: bench dashboard [--results DIR] [--port N] [--address HOST] [--storage URL ...]

Serve the leaderboard with Streamlit, on 127.0.0.1:8501 unless told otherwise. --results (or results.dir=,
or BENCH_RESULTS) picks the results store; the app reads no file outside it. The Sweeps page lists the studies
of the store's studies.db and of Optuna journal files in it (*.journal, *.log), and of every --storage URL
(a PostgreSQL or MySQL server, sqlite:///PATH, journal:PATH; repeat it for several)."""


def cmd_dashboard(args: list[str]) -> int:
    from pathlib import Path

    from bench.store import default_root

    if wants_help(args):
        print(DASHBOARD_USAGE)
        return 0
    options = {"--results": default_root(), "--port": "8501", "--address": "127.0.0.1"}
    storages = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg.startswith("results.dir="):
            options["--results"] = arg.partition("=")[2]
        elif arg == "--storage" and rest:
            storages.append(rest.pop(0))
        elif arg in options and rest:
            options[arg] = rest.pop(0)
        else:
            raise UsageError(f"bench dashboard takes --results DIR, --port N, --address HOST and --storage URL, "
                             f"got '{arg}'")
    port = options["--port"]
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"--port must be a port number from 1 to 65535, got '{port}'")
    root = Path(options["--results"]).resolve()
    if not root.is_dir():
        raise UsageError(f"no results store at {root}; run bench run first or point --results at one")
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", options["--address"],
               "--server.port", options["--port"], "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    print(f"bench dashboard: http://{options['--address']}:{options['--port']} (results {root})", flush=True)
    # This process becomes the server: a SIGTERM or Ctrl-C for `bench dashboard` reaches Streamlit itself, and no
    # child is left serving behind a parent that has gone.
    os.execve(sys.executable, command, {**os.environ, "BENCH_RESULTS": str(root),
                                        "BENCH_STORAGES": "\n".join(storages)})


EVAL_USAGE = """usage: bench eval run=ID|latest | pipeline=DIR|HUB_ID  [key=value ...]

Generate images for a prompt set with fixed per-image seeds, score each, and store images, per-image scores
and a summary with the full protocol under the run's evals/ folder. A pipeline (any diffusers folder, e.g. a
published one-step model) gets a run entry of its own. Running the same command again resumes: images already
scored are skipped.

  prompts=SET      analytic (runs of the analytic world), builtin, coco:PATH, hps_v2:DIR, parti:PATH, text:PATH
  n=N              images per prompt (64 for runs, 1 for pipelines)
  subset=N         N prompts of the set, chosen with seed (0: all)
  seed=S           noise seed (image i uses seed and i only)        batch=B   images per batch (256)
  metrics=A,B      image scorers: hpsv2, hpsv2.1, image_reward, aesthetic, pickscore, clip_score
  weights=DIR      their weights, DIR/<scorer>/... (or BENCH_WEIGHTS)
  fid_ref=PATH     FID against a reference image folder or .npz statistics (clean-fid protocol)
  inception=PATH   inception-2015-12-05.pt (or BENCH_INCEPTION)   fid_resize=256  COCO's crop + LANCZOS first
  inception_sha256=HASH   the Inception file's sha256 you trust (or BENCH_INCEPTION_SHA256); others are refused
  steps=1 guidance=0 resolution=0   pipeline sampling (0: the pipeline's default size)
  protocol=NAME    a paper's protocol, which fixes prompts' count, images, seed and metrics and prints its table:
                   hpsv2-benchmark (prompts=hps_v2:DIR), parti (prompts=parti:PATH), coco (prompts=coco:PATH
                   fid_ref=...)"""


def cmd_eval(args: list[str]) -> int:
    if wants_help(args) or not args:
        print(EVAL_USAGE)
        return 0
    store, args = store_from(args)
    import dataclasses

    from bench.config import parse_value
    from bench.eval.runner import EvalRequest, evaluate
    from bench.rewards import SCORERS

    fields = {f.name: f.type for f in dataclasses.fields(EvalRequest)}  # types as strings (PEP 563)
    keys = ("run", "pipeline", *fields)
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in keys:
            raise UsageError(f"bench eval takes {', '.join(k + '=' for k in keys)}, got '{arg}'")
        options[key] = value
    if ("run" in options) == ("pipeline" in options):
        raise UsageError("bench eval needs run=ID (bench runs list shows them), run=latest, or pipeline=DIR")
    # Defaults that depend on what is evaluated: a run of the analytic world or an external pipeline.
    request = EvalRequest(prompts="analytic", n=64) if "run" in options else EvalRequest(prompts="builtin", n=1)
    for key, text in options.items():
        kind = fields.get(key)
        if kind == "int":
            value = whole_number(key, text, 1 if key in ("n", "batch", "steps") else 0)
        elif kind == "float":
            value = parse_value(key, text, float, {"ge": 0})
        elif key == "metrics":
            value = tuple(name for name in text.split(",") if name)
            for name in value:
                if name not in SCORERS:
                    raise UsageError(f"metrics: unknown scorer '{name}'{did_you_mean(name, SCORERS)}")
        elif kind is None:
            continue  # run= or pipeline=
        else:
            value = text
        setattr(request, key, value)
    if request.protocol:
        from bench.eval.protocols import apply

        apply(request.protocol, options, request)
    run = None
    if "run" in options:
        run = store.latest() if options["run"] == "latest" else store.get(options["run"])
    run, summary = evaluate(store, request, run=run, pipeline=options.get("pipeline"), progress=show_progress())
    if summary is None:  # another process of an accelerate launch: the main one reports
        return 0
    lines = [f"evaluation {summary['eval_id']} of run {run.id}: {summary['protocol']['images']} images"]
    lines += [f"  {key:<14}{value:>10.4g}" for key, value in summary["metrics"].items()]
    if "table" in summary:
        table = summary["table"]
        lines.append(f"  as in the paper ({request.protocol}): " + ", ".join(
            f"{column} {'-' if value is None else f'{value:.4g}'}"
            for column, value in zip(table["columns"], table["row"], strict=True)))
    lines.append(f"  folder: {run.dir / 'evals' / summary['eval_id']}")
    print("\n".join(lines))
    return 0


TEACH_USAGE = """usage: bench teach family={families} out=DIR [key=value ...]

Train a tiny teacher in the family's own classes (denoiser, text encoder, scheduler configuration) on exact
samples of a Gaussian mixture over its latents, one mixture per caption, and write a pipeline folder that
`bench run backend=FAMILY backend.model=DIR` uses like any other. Runs on it report the world's exact metrics
on the generator's latents (coverage, precision, FD and MMD to the mixture and to p*, NLL) and accept the latent
rewards linear and quadratic, whose optimum p* is closed form. DIR/teacher.json holds the teacher's own error:
its eps error against the exact eps at each noise level, and its sampler's FD beside that of exact samples.

Keys:
{keys}"""


def cmd_teach(args: list[str]) -> int:
    import dataclasses
    from typing import get_type_hints

    from bench.config import parse_value
    from bench.teach import FAMILIES, TeachConfig, teach

    fields = {f.name: f for f in dataclasses.fields(TeachConfig)}
    if wants_help(args) or not args:
        keys = "\n".join(f"  {f'{name}={f.default}':<18} {f.metadata['help']}" for name, f in fields.items())
        print(TEACH_USAGE.format(families="|".join(FAMILIES), keys=keys))
        return 0
    kinds, cfg = get_type_hints(TeachConfig), TeachConfig()
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"bench teach takes {', '.join(k + '=' for k in fields)}, got '{arg}'"
                             f"{did_you_mean(key, fields) if sep else ''}")
        setattr(cfg, key, parse_value(key, text, kinds[key], fields[key].metadata))
    out = teach(cfg, progress=show_progress())
    print(f"taught {cfg.family} in {out} (the teacher's error: {out / 'teacher.json'}); "
          f"train on it with: bench run backend={cfg.family} backend.model={out}")
    return 0


PROMPTS_USAGE = """usage: bench prompts SET [n=N] [seed=S] [--json]

SET is builtin, analytic, coco:PATH (annotation JSON or one caption a line), hps_v2:DIR (the four style JSON
files) or parti:PATH (TSV). Prints the set's size and version and its prompts, or a subset of n chosen with
seed (the same on every machine)."""


def cmd_prompts(args: list[str]) -> int:
    from bench.prompts import load_prompt_set

    if wants_help(args) or not args:
        print(PROMPTS_USAGE)
        return 0
    spec, options, as_json = args[0], {"n": None, "seed": "0"}, "--json" in args
    for arg in (a for a in args[1:] if a != "--json"):
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise UsageError(f"bench prompts takes n=N and seed=S, got '{arg}'")
        options[key] = value
    prompts = load_prompt_set(spec)
    if options["n"] is not None:
        prompts = prompts.subset(whole_number("n", options["n"], 1), whole_number("seed", options["seed"]))
    if as_json:
        print(json.dumps({"name": prompts.name, "version": prompts.version, "prompts": list(prompts.prompts),
                          "styles": list(prompts.styles) if prompts.styles else None}, indent=2))
    else:
        print(f"{prompts.name}: {len(prompts.prompts)} prompts, version {prompts.version}")
        for i, text in enumerate(prompts.prompts):
            style = f"[{prompts.styles[i]}] " if prompts.styles else ""
            print(f"  {i:>5}  {style}{text}")
    return 0
