"""The one loop: K fake-score (DSM) updates, then one generator update whose loss the method supplies.

Everything a method should not have to think about lives here: batches and noise, Adam, clipping, EMA,
mixed precision, the NaN guard, data-parallel training, checkpoints and exact resume, periodic evaluation,
sample grids and the progress bar.

One command line runs on one CPU, one GPU or under `accelerate launch` on many: `accelerate` wraps the two
trained networks for data parallelism (DDP) and saves and loads the training state collectively, on every rank;
with train.parallel=fsdp they are sharded instead (bench.train.sharding). `train.batch_size` is the global batch:
every rank draws the whole batch's noise and prompts from a stream seeded by (seed, step) and keeps its own slice,
so a run is the same run on any number of processes, and a checkpoint needs no random state to resume exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

from bench.backends import build_backend
from bench.config import RunConfig, flatten
from bench.diffusion import broadcast, dsm_loss, noised
from bench.errors import UsageError
from bench.method import GeneratorBatch
from bench.provenance import folder_sha256, provenance
from bench.store import Run, Store
from bench.store.files import replace_folder
from bench.train import checkpoint, sharding
from bench.train.trackers import Trackers, check_ready

FAKE_PHASE, GENERATOR_PHASE = 0, 1


class Diverged(Exception):
    """A non-finite quantity: the run stops and keeps its last good checkpoint."""

    def __init__(self, step: int, quantity: str, value: float):
        super().__init__(f"non-finite {quantity} ({value}) at step {step}; the last good checkpoint is kept")


class EMA:
    """Exponential moving average of a module's trainable parameters (with LoRA: of the adapters only)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {name: p.detach().clone() for name, p in trainable(module)}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for name, p in trainable(module):
            self.params[name].lerp_(p.detach(), 1 - self.decay)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        """`module` with the averaged weights for the duration of the block."""
        current = {name: p.detach().clone() for name, p in trainable(module)}
        self.copy_to(module, self.params)
        try:
            yield module
        finally:
            self.copy_to(module, current)

    @staticmethod
    @torch.no_grad()
    def copy_to(module: torch.nn.Module, params: dict) -> None:
        for name, p in trainable(module):
            p.copy_(params[name])

    def load(self, params: dict) -> None:
        for name, value in params.items():
            self.params[name].copy_(sharding.shard_like(value, self.params[name]))


class ProgressLines:
    """Progress where no terminal shows a bar (a cluster job's log): a line every `every` seconds."""

    def __init__(self, label: str, total: int, initial: int, every: float):
        self.label, self.total, self.every = label, total, every
        self.start_step, self.start = initial, time.perf_counter()
        self.last = self.start

    def update(self, step: int, record: dict) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        rate = (step - self.start_step) / max(now - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        print(f"{self.label}: step {step}/{self.total} ({100 * step / self.total:.0f}%), {rate:.2f} step/s, "
              f"ETA {eta:.0f} s, reward {record['reward']:.4g}, div {record.get('div', float('nan')):.3g}",
              file=sys.stderr, flush=True)


class Progress:
    """The counters a checkpoint carries besides the networks, optimisers and EMA."""

    def __init__(self):
        self.step, self.wall = 0, 0.0


def trainable(module: torch.nn.Module):
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def generator_optimiser(params: list, train) -> torch.optim.Optimizer:
    """SGD by default. Adam divides each coordinate by its gradient's RMS, so where the regulariser's gradient is
    nothing but the fake score's noise (a generator at the reference, or in directions the fake cannot resolve)
    it still steps lr in every coordinate: a random walk that no restoring force the fake can see holds back
    (README, Drift). SGD's steps shrink with the gradient; clipping bounds them by lr_gen * grad_clip."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr_gen)
    return adam(params, train.lr_gen, (train.beta1, train.beta2))


def adam(params: list, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused into one kernel where torch has one for the parameters' device: on CPU the per-tensor loop cost
    0.95 ms an update of the analytic fake score against 0.20 fused, a tenth of a KL-RLHF step."""
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fusable or None)


def thread_count(cfg: RunConfig) -> int:
    """torch's CPU threads for this run: sized to the work and to the processes sharing the machine.

    torch's default (every core) oversubscribes as soon as anything else runs: on two cores, two analytic runs side
    by side took 4.5 times as long as one alone with two threads each, 1.03 times with one each, while one run
    alone takes only 20% less time with a second thread (benchmarks/side_by_side.py).
    """
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    if cfg.backend.name == "analytic":
        return 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (os.cpu_count() or 1) // local_processes)


def size_thread_pools(cfg: RunConfig) -> None:
    threads = thread_count(cfg)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable only before the first parallel work of the process
        torch.set_num_interop_threads(threads)


def precision_of(cfg: RunConfig) -> str:
    if cfg.train.precision == "auto":
        return "bf16" if cfg.device.startswith("cuda") else "fp32"
    return cfg.train.precision


class Trainer:
    def __init__(self, cfg: RunConfig, run: Run | None, progress: bool = True, on_eval=None,
                 report_every: float | None = None):
        """`on_eval(step, metrics)` sees every evaluation; a sweep uses it to prune (by raising). Without a progress
        bar, `report_every` seconds between progress lines (for a log file); None for none."""
        self.cfg, self.run, self.progress, self.on_eval = cfg, run, progress, on_eval
        self.report_every = report_every
        if cfg.device.startswith("cuda:"):
            torch.cuda.set_device(torch.device(cfg.device))
        # Autocast is ours, not accelerate's: its precision is fixed once per process, and a sweep or a
        # benchmark trains several configurations in one.
        self.precision = precision_of(cfg)
        # Before anything is built: a tracker that cannot start is one line, not a crash once training began.
        check_ready(cfg.tracker, Path(cfg.results.dir))
        self.trackers: Trackers | None = None
        size_thread_pools(cfg)
        self.accelerator = accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision="no")
        self.device = accelerator.device
        self.ranks, self.rank = accelerator.num_processes, accelerator.process_index
        if cfg.train.batch_size % self.ranks:
            raise UsageError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly "
                             f"over the {self.ranks} processes; use a multiple of {self.ranks}")
        self.method = cfg.method
        torch.manual_seed(cfg.seed)  # the same initial networks on every rank
        self.backend = build_backend(cfg, self.device)
        self.schedule = self.backend.schedule
        generator, fake = self.backend.generator, self.backend.fake
        self.start = self.start_run() if cfg.init else None  # checked now: a bad init= creates no run
        self.sharded, self.export_copy = cfg.train.parallel == "fsdp", None
        if self.sharded:
            if not getattr(self.backend, "shardable", False):
                raise UsageError(f"train.parallel=fsdp is for the diffusers backends; backend={cfg.backend.name}'s "
                                 "networks are small enough to hold whole (and its exact metrics read them outside "
                                 "their forward): use train.parallel=ddp")
            if self.ranks == 1:
                raise UsageError("train.parallel=fsdp shards the trained networks over the processes of a launch, and "
                                 "this is one process: start it with accelerate launch --num_processes N -m bench run "
                                 "..., or use train.parallel=ddp")
            if cfg.init:
                raise UsageError("init= is not supported with train.parallel=fsdp yet; start the run data-parallel "
                                 "(train.parallel=ddp), or drop init=")
            if self.main and hasattr(self.backend, "export"):  # the export needs the generator whole: a copy
                self.export_copy = copy.deepcopy(generator).cpu()
            device_mesh = sharding.mesh()
            for module in (generator, fake):
                sharding.shard(module, device_mesh)
        self.ema = EMA(generator, cfg.train.ema)
        betas = (cfg.train.beta1, cfg.train.beta2)
        opt_gen = generator_optimiser([p for _, p in trainable(generator)], cfg.train)
        opt_fake = adam([p for _, p in trainable(fake)], cfg.train.lr_fake, betas)
        if self.sharded:  # sharded in place: nothing for accelerate to wrap
            self.generator, self.fake, self.opt_gen, self.opt_fake = generator, fake, opt_gen, opt_fake
        else:
            self.generator, self.fake, self.opt_gen, self.opt_fake = accelerator.prepare(generator, fake, opt_gen,
                                                                                         opt_fake)
        # Unwrapped once: accelerate's unwrap_model asks importlib whether DeepSpeed is installed on every call.
        self.bare = {module: accelerator.unwrap_model(module) for module in (self.generator, self.fake)}
        self.counters = Progress()

    def start_run(self) -> Run:
        """The finished run that `init=` names, checked to have trained the same backend."""
        run = Store(self.cfg.results.dir).get(self.cfg.init)
        ours, theirs = self.cfg.to_dict()["backend"], run.config["backend"]
        if ours != theirs:
            differ = ", ".join(f"backend.{k}" for k in sorted(ours) if ours.get(k) != theirs.get(k))
            raise UsageError(f"init={run.id} trained another backend ({differ} differ); start from a run of the same "
                             "world or model, or give those keys its values")
        return run

    @property
    def step(self) -> int:
        return self.counters.step

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def attach(self, create_run) -> None:
        """Give every rank the run that the main process creates with `create_run()`."""
        run_id = [create_run().id if self.main else None]
        if self.ranks > 1:
            broadcast_object_list(run_id)
        self.run = Store(self.cfg.results.dir).get(run_id[0])

    def autocast(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16")

    def unwrapped(self, module):
        """The network itself, outside any data-parallel wrapper (the trainer's own two from `bare`; a network put in
        their place, as tests of the fake score do with a generator of known law, unwrapped when asked)."""
        bare = self.bare.get(module)
        return bare if bare is not None else self.accelerator.unwrap_model(module)

    # -- batches ------------------------------------------------------------------------------------------

    def draw(self, phase: int, update: int = 0) -> dict:
        """This rank's slice of a global batch: generator inputs, diffusion times and noise.

        Each update of a step draws its own batch, seeded by (seed, step, phase, update): the K fake-score
        updates see K different batches, and a resumed run draws exactly what it would have.
        """
        n = self.cfg.train.batch_size
        rng = torch.Generator().manual_seed(((self.cfg.seed * 1_000_003 + self.step) * 2 + phase) * 1009 + update)
        z, cond = self.backend.sample_inputs(n, rng)
        t = self.method.sample_t(n, rng)
        eps = torch.randn((n, *z.shape[1:]), generator=rng)
        cfg = self.method.cfg_scale(rng)  # drawn last: a fixed scale leaves every other draw as it was
        mine = slice(self.rank * n // self.ranks, (self.rank + 1) * n // self.ranks)
        return {"z": z[mine].to(self.device), "cond": self.backend.encode(cond[mine]),
                "t": t[mine].to(self.device), "eps": eps[mine].to(self.device), "cfg": cfg}

    # -- updates ------------------------------------------------------------------------------------------

    def fake_updates(self, count: int) -> dict:
        """`count` fake-score updates, each on a batch of its own (see draw)."""
        logs = [self.fake_update(update) for update in range(count)]
        return {key: torch.stack([log[key] for log in logs]).mean() for key in logs[0]}

    def fake_update(self, update: int = 0) -> dict:
        """Denoising score matching of the fake score on fresh generator samples (drawn without gradient)."""
        d = self.draw(FAKE_PHASE, update)
        with self.autocast():
            with torch.no_grad():
                x0 = self.unwrapped(self.generator)(d["z"], d["cond"]).float()
            alpha, sigma, x_t = noised(self.schedule, x0, d["t"], d["eps"])
            loss = dsm_loss(self.fake(x_t, d["t"], alpha, sigma, d["cond"]).float(), d["eps"]).mean()
        return {"loss_fake": loss.detach(), "grad_fake": self.apply(loss, self.fake, self.opt_fake)}

    def generator_batch(self, x0, t, eps, cond, cfg: float | None = None) -> GeneratorBatch:
        """Noise x0 at the method's times and bind the score networks to those times and prompts; `cfg` is the
        step's guidance scale (alpha_cfg unless drawn from a range).

        The networks are called unwrapped: they are frozen here (gradients reach only their input), and a
        data-parallel wrapper would wait for parameter gradients that never come.
        """
        backend, fake, schedule = self.backend, self.unwrapped(self.fake), self.schedule
        alpha, sigma, x_t = noised(schedule, x0, t, eps)
        sigma_b = broadcast(sigma, x0)

        def ref_at(x, time, conditional: bool):
            return backend.ref_score(x, time, *schedule.alpha_sigma(time), cond if conditional else None)

        return GeneratorBatch(
            x0=x0, x_t=x_t, eps=eps, t=t, alpha=broadcast(alpha, x0), sigma=sigma_b,
            weight=self.method.weight(alpha, sigma), cfg=self.method.alpha_cfg if cfg is None else cfg,
            fake_score=lambda x: -fake(x, t, alpha, sigma, cond).float() / sigma_b,
            ref_cond=lambda x: backend.ref_score(x, t, alpha, sigma, cond),
            ref_uncond=lambda x: backend.ref_score(x, t, alpha, sigma, None),
            ref_at=ref_at, noise_level=schedule.alpha_sigma,
            reward=lambda x: backend.reward(x, cond),
        )

    def generator_update(self) -> dict:
        method = self.method
        d = self.draw(GENERATOR_PHASE)
        with self.autocast():
            x0 = self.generator(d["z"], d["cond"]).float()
            batch = self.generator_batch(x0, d["t"], d["eps"], d["cond"], d["cfg"])
            loss = method.regulariser(batch)
            reward_weight = method.reward_weight(self.step)
            if reward_weight:  # not computed at all without a weight (alpha_rew 0, the cold start)
                loss = loss - reward_weight * method.reward_term(batch)
            loss = loss.mean()
            with torch.no_grad():  # r(x0) is logged whatever the method optimised; computed once either way
                reward = batch.reward_x0.mean()
        logs = {"loss_gen": loss.detach(), "reward": reward.detach(), **batch.logs}
        logs["grad_gen"] = self.apply(loss, self.generator, self.opt_gen)
        return logs

    def apply(self, loss, module, optimiser):
        """Backpropagate into `module` only (the other networks stay frozen), average over ranks, clip, step."""
        # accelerate's optimiser wrapper asks importlib for LOMO on every step and inspects zero_grad's signature
        # (a tenth of an analytic step); with no gradient scaler or accumulation here it only forwards the calls.
        optimiser = getattr(optimiser, "optimizer", optimiser)
        optimiser.zero_grad(set_to_none=True)
        params = [p for _, p in trainable(module)]
        if self.sharded:
            # FSDP2 hands each gradient to its shard in hooks that a backward restricted by `inputs=` skips. The
            # fake's weights get gradients from a generator update too (wasted work, and cleared before its own).
            self.accelerator.backward(loss)
        else:
            self.accelerator.backward(loss, inputs=params)
        limit = self.cfg.train.grad_clip or float("inf")
        norm = sharding.full(self.accelerator.clip_grad_norm_(params, limit))
        if torch.isfinite(norm):
            optimiser.step()
        return norm.detach()

    # -- state --------------------------------------------------------------------------------------------

    def save(self):
        """Every rank takes part (sharded weights are gathered; a save on one rank only would hang the others)."""
        folder = self.run.checkpoint_dir
        partial = folder.with_name(".saving")
        if self.sharded:
            self.save_sharded(partial)
        else:
            self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()
        ema = {name: sharding.full(p) for name, p in self.ema.params.items()}
        if self.main:
            checkpoint.write_extras(partial, ema, self.step, self.counters.wall, self.ranks)
            replace_folder(partial, folder)
        self.accelerator.wait_for_everyone()

    def optimised(self) -> dict:
        return {"generator": (self.generator, self.opt_gen), "fake": (self.fake, self.opt_fake)}

    def save_sharded(self, partial: Path) -> None:
        """The networks whole on the main process, in the files a data-parallel checkpoint has; the optimisers'
        states as each process's shards."""
        states = [sharding.full_state(self.generator), sharding.full_state(self.fake)]
        if self.main:
            shutil.rmtree(partial, ignore_errors=True)  # a save that a crash cut short
            partial.mkdir(parents=True)
            for state, name in zip(states, (checkpoint.GENERATOR_FILE, checkpoint.FAKE_FILE), strict=True):
                checkpoint.save_weights(state, partial / name)
        self.accelerator.wait_for_everyone()
        sharding.save_optimizers(partial, self.optimised())

    def restore(self) -> bool:
        folder = checkpoint.last_checkpoint(self.run)
        if folder is None:
            return False
        checkpoint.check_contents(folder)
        if self.sharded:
            for module, name in ((self.generator, checkpoint.GENERATOR_FILE), (self.fake, checkpoint.FAKE_FILE)):
                sharding.load_full_state(module, checkpoint.weights(folder, name))
            sharding.load_optimizers(folder, self.optimised())
        else:
            self.accelerator.load_state(str(folder))  # safetensors models, weights-only optimiser states
        self.ema.load(checkpoint.weights(folder, checkpoint.EMA_FILE))
        state = checkpoint.progress(folder)
        self.counters.step, self.counters.wall = int(state["step"]), float(state["wall"])
        if self.main:
            self.run.truncate_log(self.step)
            for grid in (self.run.dir / "samples").glob("step_*.png"):
                if int(grid.stem.split("_")[1]) > self.step:
                    grid.unlink()
        return True

    def replica_checksums(self) -> list[float]:
        """One number a rank from its own generator weights: ranks that disagree have silently diverged."""
        total = sum(sharding.full(p.detach()).double().sum() for _, p in trainable(self.unwrapped(self.generator)))
        return self.accelerator.gather(total.reshape(1).to(self.device)).tolist()

    # -- loop ---------------------------------------------------------------------------------------------

    def step_once(self) -> dict:
        """One step: K fake-score updates on K fresh batches, one generator update, the EMA. Returns the
        step's logs, averaged over ranks and checked for non-finite values."""
        logs = self.fake_updates(self.method.fake_steps)
        logs.update(self.generator_update())
        self.counters.step += 1
        logs = self.guard(logs)
        self.ema.update(self.unwrapped(self.generator))
        return logs

    def evaluate(self):
        """On the main process, with the EMA weights; the other ranks wait at their next collective. Sharded, every
        rank runs the generator (each forward gathers the weights) and the main process records."""
        if not (self.main or self.sharded):
            return None
        cfg = self.cfg.eval
        with self.ema.applied(self.unwrapped(self.generator)) as generator:
            generator.eval()
            with self.autocast():
                # The exact KL costs a Jacobian a sample: at the first and last evaluations only.
                metrics, per_prompt = self.backend.evaluate(generator, cfg.samples, cfg.seed,
                                                            exact_kl=self.step in (0, self.cfg.train.steps))
                if cfg.grid:
                    picture = self.backend.grid(generator)
                    if self.main:
                        grid = self.run.dir / "samples" / f"step_{self.step:06d}.png"
                        picture.save(grid)
                        if self.trackers is not None:
                            self.trackers.log_grid(grid, self.step)
            generator.train()
        if not self.main:
            return None
        self.record({"kind": "eval", "step": self.step, **metrics, "per_prompt": per_prompt})
        if self.on_eval is not None:
            self.on_eval(self.step, metrics)
        return metrics

    def record(self, record: dict) -> None:
        """A record of the run's metrics.jsonl, mirrored to its trackers."""
        self.run.log(record)
        if self.trackers is not None:
            self.trackers.log(record)

    def fit(self) -> dict:
        try:
            return self._fit()
        except BaseException:
            if self.trackers is not None:  # a run that raised leaves no tracker run open as if still going
                self.trackers.fail()
            raise

    def _fit(self) -> dict:
        train, counters = self.cfg.train, self.counters
        resumed = self.restore()
        if self.main and self.cfg.tracker:  # after restore: a resumed run continues its tracker run by name
            self.trackers = Trackers(self.cfg.tracker, self.run, flatten(self.cfg.to_dict()))
        if not resumed:
            if self.start is not None:
                generator = self.unwrapped(self.generator)
                checkpoint.load_start(self.start, generator, self.unwrapped(self.fake))
                self.ema = EMA(generator, self.cfg.train.ema)
            self.save()
            self.evaluate()
        bar = tqdm(total=train.steps, initial=self.step, desc=f"{self.method.name} {self.run.id}", unit="step",
                   disable=not (self.progress and self.main), dynamic_ncols=True, mininterval=0.5)
        lines = ProgressLines(f"{self.method.name} {self.run.id}", train.steps, self.step, self.report_every) \
            if self.main and self.report_every and not self.progress else None
        window: list[dict] = []
        started = time.perf_counter() - counters.wall
        while self.step < train.steps:
            window.append(self.step_once())
            if self.step % train.log_every == 0 or self.step == train.steps:
                record = {key: sum(w[key] for w in window) / len(window) for key in window[0]}
                if self.main:
                    self.record({"kind": "train", "step": self.step, **record})
                bar.set_postfix(reward=f"{record['reward']:.3f}", div=f"{record.get('div', float('nan')):.3g}")
                if lines is not None:
                    lines.update(self.step, record)
                window = []
            if (train.eval_every and self.step % train.eval_every == 0) or self.step == train.steps:
                self.evaluate()
            if self.step % train.ckpt_every == 0 or self.step == train.steps:
                counters.wall = time.perf_counter() - started
                self.save()
            bar.update(1)
        bar.close()
        summary = self.summary()
        if self.trackers is not None:
            self.trackers.finish(summary)
            print(self.trackers.where(), file=sys.stderr, flush=True)
        if hasattr(self.backend, "export"):
            with self.ema.applied(self.unwrapped(self.generator)) as generator:
                if self.sharded:  # gathered whole (every rank takes part) into the main process's copy
                    state, generator = sharding.full_state(generator), self.export_copy
                    if self.main:
                        generator.load_state_dict(state)
                if self.main:
                    self.backend.export(generator, self.run.dir / "pipeline", {"run": self.run.id, "step": self.step})
        self.accelerator.wait_for_everyone()
        return summary

    def guard(self, logs: dict) -> dict:
        """The step's logs averaged over ranks (one small all-reduce), checked for non-finite values."""
        values = torch.stack([v.float().reshape(()) for v in logs.values()]).to(self.device)
        values = self.accelerator.reduce(values, "mean") if self.ranks > 1 else values
        averaged = dict(zip(logs, values.tolist(), strict=True))
        bad = [key for key, value in averaged.items() if not math.isfinite(value)]
        if bad:
            raise Diverged(self.step, bad[0], averaged[bad[0]])
        return averaged

    @property
    def state_bytes(self) -> int:
        """Bytes of trained state this process holds (under FSDP each process holds about as much)."""
        optimisers = [getattr(o, "optimizer", o) for o in (self.opt_gen, self.opt_fake)]  # accelerate's wrapper
        return sharding.state_bytes([self.generator, self.fake], optimisers, self.ema.params)

    def summary(self) -> dict:
        checksums = self.replica_checksums()
        if len(set(checksums)) > 1:
            raise RuntimeError(f"the {self.ranks} ranks hold different generator weights ({checksums}); "
                               "data-parallel training has desynchronised")
        if not self.main:
            return {}
        evals = self.run.records("eval")
        config = self.cfg.to_dict()
        return {
            "run": self.run.id,
            "method": self.method.name,
            "aims_at_p_star": self.method.aims_at_p_star,
            "backend": self.cfg.backend.name,
            "reward": self.cfg.reward,
            "steps": self.step,
            "wall_s": round(self.counters.wall, 2),
            "metrics": scalars(evals[-1]),
            "initial": scalars(evals[0]),
            "per_prompt": evals[-1]["per_prompt"],
            "optimum": self.backend.describe_optimum(self.cfg.eval.samples, self.cfg.eval.seed),
            "protocol": {
                "backend": config["backend"], "eval_samples": self.cfg.eval.samples,
                "eval_seed": self.cfg.eval.seed, "generator": "ema" if self.cfg.train.ema else "raw",
                "init": self.cfg.init or None,
            },
            "distributed": {"strategy": "FSDP" if self.sharded else self.accelerator.distributed_type.value,
                            "processes": self.ranks, "trained_state_bytes_per_process": self.state_bytes,
                            "batch_per_process": self.cfg.train.batch_size // self.ranks,
                            "effective_batch": self.cfg.train.batch_size, "precision": self.precision,
                            "replica_checksums": checksums},
            "checkpoint_sha256": folder_sha256(self.run.checkpoint_dir),
            "provenance": provenance(config, str(self.device)),
        }


def scalars(record: dict) -> dict:
    """The metrics of an evaluation record, without its bookkeeping and per-prompt rows."""
    return {k: v for k, v in record.items() if k not in ("kind", "step", "per_prompt")}
