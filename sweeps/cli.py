"""`bench sweep`, `bench sweep status`, `bench sweep best`."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from optuna.trial import TrialState

from bench.cli import report_seconds, show_progress, sigterm_as_ctrl_c, store_from, wants_help, whole_number
from bench.errors import UsageError

USAGE = """usage: bench sweep [status|best] [study=NAME] [space=NAME|PATH] [storage=URL] [n_trials=N] [--workers N]
                   [method=NAME] [any bench run key=value, passed to every trial]

  space=reward_vs_cfg    search space: a YAML file in sweeps/ (reward_vs_cfg, reward_vs_nll) or a path
  study=NAME             study name (default: METHOD-SPACE); status and best find it by this name
  storage=URL            Optuna storage (default: sqlite:///<results.dir>/studies.db); PostgreSQL or MySQL
                         URLs for many machines, journal:PATH for a journal file on a shared filesystem
  n_trials=12            trials to complete in the study, over all workers together (a grid space: its size)
  sampler_seed=0         seed of the TPE sampler
  heartbeat=10           seconds between trial heartbeats; a trial silent for 3 heartbeats is failed and re-queued
  --workers N            N worker processes on this machine (run the same command elsewhere to add machines)

Each trial is a run in the results store (bench runs list study=NAME). Studies open in optuna-dashboard."""

SWEEP_KEYS = ("study", "space", "storage", "n_trials", "sampler_seed", "heartbeat")


def parse(args: list[str]) -> tuple[str, dict, list[str], int, list[str]]:
    """(action, sweep options, run arguments, workers, the arguments less --workers N)."""
    action = "run"
    if args and args[0] in ("status", "best"):
        action, args = args[0], args[1:]
    workers = 1
    if "--workers" in args:
        at = args.index("--workers")
        workers = whole_number("--workers", args[at + 1] if at + 1 < len(args) else "", 1)
        args = args[:at] + args[at + 2:]
    options = {"space": "reward_vs_cfg", "sampler_seed": 0, "heartbeat": 10}
    run_args = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got '{arg}' (bench sweep --help)")
        if key in ("n_trials", "sampler_seed", "heartbeat"):
            options[key] = whole_number(key, value, 0 if key == "sampler_seed" else 1)
        elif key in SWEEP_KEYS:
            options[key] = value
        else:
            run_args.append(arg)
    return action, options, run_args, workers, args


def sweep_main(args: list[str]) -> int:
    if wants_help(args):
        print(USAGE)
        return 0
    action, options, run_args, workers, worker_args = parse(args)
    from bench.config import DEFAULT_METHOD
    from sweeps import study as studies

    store, _ = store_from(run_args)
    method = next((a.partition("=")[2] for a in run_args if a.startswith("method=")), DEFAULT_METHOD)
    # The same name the space will carry (its file's stem), so status and best find the study by it.
    name = options.get("study") or f"{method}-{Path(options['space']).stem}"
    default = studies.default_storage(store.root)
    url = options.get("storage") or default

    if action in ("status", "best"):
        if url == default and not (store.root / "studies.db").exists():
            raise UsageError(f"no studies in {store.root} yet; start one with bench sweep method=NAME")
        study = studies.load_study(studies.open_storage(url, options["heartbeat"]), name)
        print(status_text(study, url) if action == "status" else best_text(study))
        return 0

    from sweeps.space import load_space

    trial_args = [a for a in run_args if not a.startswith("method=")]
    space = load_space(options["space"], [f"method={method}", *trial_args])  # all checked before anything is written
    store.root.mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(url, options["heartbeat"])
    study = studies.create_study(storage, name, space, method, trial_args, options["sampler_seed"])
    n_trials = options.get("n_trials") or (math.prod(len(v) for v in space.grid.values()) if space.grid else 12)
    started = time.perf_counter()
    sigterm_as_ctrl_c()  # the trial in progress is re-queued
    try:
        if workers == 1:
            work_here(study, space, trial_args, n_trials, store, method, url)
        else:
            spawn_workers(worker_args, workers)
    except KeyboardInterrupt as err:
        print(f"\nbench sweep: stopped ({err or 'Ctrl-C'}); a trial in progress was re-queued. Continue with the "
              "same command.", file=sys.stderr)
        return 130
    print(f"study {name}: {n_trials} trials in {time.perf_counter() - started:.1f} s (storage {url})")
    print(best_text(study))
    return 0


def work_here(study, space, trial_args, n_trials, store, method, url) -> None:
    from tqdm import tqdm

    from sweeps import study as studies

    done = sum(t.state in studies.DONE for t in study.get_trials(deepcopy=False))
    bar = tqdm(total=n_trials, initial=min(done, n_trials), desc=f"study {study.study_name}", unit="trial",
               disable=not show_progress())

    def say(text: str) -> None:
        bar.write(text) if show_progress() else print(text, flush=True)

    def on_start(trial: dict):
        say(f"trial {trial['trial']:>3} started   {' '.join(settings(trial['params']))}  run {trial['run']}")

    def on_trial(outcome: dict):
        params = " ".join(settings(outcome["params"]))
        values = " ".join(f"{k}={v:.4g}" for k, v in outcome.get("values", {}).items())
        say(f"trial {outcome['trial']:>3} {outcome['state']:<9} {params}  {values}  run {outcome['run']}")
        if outcome["state"] in ("complete", "pruned"):
            bar.update(1)

    studies.work(study, space, trial_args, n_trials, store, method, url, on_trial=on_trial, on_start=on_start,
                 report_every=report_seconds())
    bar.close()


def spawn_workers(worker_args: list[str], workers: int) -> None:
    """N copies of this command without --workers, a share of the cores each; wait for all of them."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "sweep", *worker_args], env=env)
             for _ in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # pass the stop on: each worker re-queues its trial
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
        raise
    if any(codes):
        raise UsageError(f"a sweep worker exited with code {max(codes)}; bench sweep status shows the trials")


def settings(params: dict) -> list[str]:
    """key=value words for showing parameters; floats to 4 significant digits."""
    return [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]


def status_text(study, url: str) -> str:
    trials = study.get_trials(deepcopy=False)
    identity = study.user_attrs.get("identity", {})
    objectives = [m for m, _ in study.user_attrs.get("objectives", [])] or ["value"]
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    lines = [
        f"study {study.study_name}  method={identity.get('method')}  space={identity.get('space')}  storage {url}",
        "trials: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n),
        f"{'#':>4}  {'state':<9}" + "".join(f"{m:>12}" for m in objectives) + "  params  run",
    ]
    for t in trials:
        values = t.values or [float("nan")] * len(objectives)
        params = " ".join(settings(t.params))
        lines.append(f"{t.number:>4}  {t.state.name.lower():<9}" + "".join(f"{v:>12.4g}" for v in values)
                     + f"  {params}  {t.user_attrs.get('run_id', '-')}")
    return "\n".join(lines)


def best_text(study) -> str:
    identity = study.user_attrs.get("identity", {})
    objectives = [m for m, _ in study.user_attrs.get("objectives", [])]
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return f"study {study.study_name} has no complete trial yet"
    best = study.best_trials
    fixed = study.user_attrs.get("fixed", {})
    title = "best trial" if len(objectives) == 1 else f"Pareto front ({len(best)} trials)"
    lines = [f"{title} of study {study.study_name}:"]
    for t in best:
        values = ", ".join(f"{m}={v:.4g}" for m, v in zip(objectives, t.values, strict=True))
        # The trial's layers in their order (preset < space's fixed < command line < searched), each key once and
        # every searched value at full precision: the line trains exactly the trial's run.
        layers = {"method": identity["method"], **fixed}
        layers.update(arg.partition("=")[::2] for arg in identity["run_args"])
        layers.update({key: repr(value) for key, value in t.params.items()})
        command = ["bench run", *(f"{k}={v}" for k, v in layers.items())]
        lines += [f"  trial {t.number}: {values}", f"    {' '.join(command)}"]
    return "\n".join(lines)
