"""The one loop: K fake-score (DSM) updates, then one generator update whose loss the method supplies.

Everything a method should not have to think about lives here: batches and noise, Adam, clipping, EMA,
the NaN guard, checkpoints and exact resume, periodic evaluation, sample grids and the progress bar.
"""

from __future__ import annotations

import copy
import time

import torch
from tqdm import tqdm

from bench.backends import build_backend
from bench.config import RunConfig
from bench.diffusion import broadcast, dsm_loss
from bench.method import GeneratorBatch
from bench.provenance import file_sha256, provenance
from bench.store import Run
from bench.store.files import atomic_torch_save


class Diverged(Exception):
    """A non-finite quantity: the run stops and keeps its last good checkpoint."""

    def __init__(self, step: int, quantity: str, value: float):
        super().__init__(f"non-finite {quantity} ({value}) at step {step}; the last good checkpoint is kept")


class Trainer:
    def __init__(self, cfg: RunConfig, run: Run, progress: bool = True, on_eval=None):
        """`on_eval(step, metrics)` sees every evaluation; a sweep uses it to prune (by raising)."""
        self.cfg, self.run, self.progress, self.on_eval = cfg, run, progress, on_eval
        self.device = torch.device(cfg.device)
        self.method = cfg.method
        torch.manual_seed(cfg.seed)
        self.backend = build_backend(cfg, self.device)
        self.schedule = self.backend.schedule
        self.generator, self.fake = self.backend.generator, self.backend.fake
        self.ema = copy.deepcopy(self.generator).requires_grad_(False)
        betas = (cfg.train.beta1, cfg.train.beta2)
        self.opt_gen = torch.optim.Adam(self.generator.parameters(), lr=cfg.train.lr_gen, betas=betas)
        self.opt_fake = torch.optim.Adam(self.fake.parameters(), lr=cfg.train.lr_fake, betas=betas)
        # All training randomness comes from this one stream, so a checkpoint of it makes resume exact.
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step, self.wall = 0, 0.0

    # -- updates ------------------------------------------------------------------------------------------

    def noisy(self, x0):
        t = self.method.sample_t(len(x0), self.rng)
        alpha, sigma = self.schedule.alpha_sigma(t)
        eps = torch.randn(x0.shape, generator=self.rng)
        return t, alpha, sigma, eps, broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * eps

    def fake_update(self) -> dict:
        z, cond = self.backend.sample_inputs(self.cfg.train.batch_size, self.rng)
        with torch.no_grad():
            x0 = self.generator(z, cond)
        t, alpha, sigma, eps, x_t = self.noisy(x0)
        loss = dsm_loss(self.backend.fake_eps(x_t, t, alpha, sigma, cond), eps).mean()
        return {"loss_fake": loss.detach(), "grad_fake": self.apply(loss, self.fake, self.opt_fake)}

    def generator_batch(self, x0, cond) -> GeneratorBatch:
        """Noise x0 at the method's times and bind the score networks to those times and prompts."""
        backend = self.backend
        t, alpha, sigma, eps, x_t = self.noisy(x0)
        sigma_b = broadcast(sigma, x0)
        return GeneratorBatch(
            x0=x0, x_t=x_t, eps=eps, alpha=broadcast(alpha, x0), sigma=sigma_b,
            weight=self.method.weight(alpha, sigma),
            fake_score=lambda x: -backend.fake_eps(x, t, alpha, sigma, cond) / sigma_b,
            ref_cond=lambda x: backend.ref_score(x, alpha, sigma, cond),
            ref_uncond=lambda x: backend.ref_score(x, alpha, sigma, None),
        )

    def generator_update(self) -> dict:
        backend, method = self.backend, self.method
        z, cond = backend.sample_inputs(self.cfg.train.batch_size, self.rng)
        x0 = self.generator(z, cond)
        batch = self.generator_batch(x0, cond)
        regulariser = method.regulariser(batch)
        reward = backend.reward(x0, cond)
        loss = (regulariser - method.alpha_rew * reward).mean()
        logs = {"loss_gen": loss.detach(), "reward": reward.mean().detach(), **batch.logs}
        logs["grad_gen"] = self.apply(loss, self.generator, self.opt_gen)
        return logs

    def apply(self, loss, module, optimiser):
        """Backpropagate into `module` only (the other networks stay frozen), clip, step."""
        optimiser.zero_grad(set_to_none=True)
        params = [p for p in module.parameters() if p.requires_grad]
        loss.backward(inputs=params)
        limit = self.cfg.train.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        if torch.isfinite(norm):
            optimiser.step()
        return norm.detach()

    @torch.no_grad()
    def update_ema(self):
        for averaged, current in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            averaged.lerp_(current, 1 - self.cfg.train.ema)

    # -- state --------------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "step": self.step, "wall": self.wall,
            "generator": self.generator.state_dict(), "fake": self.fake.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_gen": self.opt_gen.state_dict(), "opt_fake": self.opt_fake.state_dict(),
            "rng": self.rng.get_state(),
        }

    def load(self, state: dict):
        self.step, self.wall = state["step"], state["wall"]
        self.generator.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake"])
        self.ema.load_state_dict(state["ema"])
        self.opt_gen.load_state_dict(state["opt_gen"])
        self.opt_fake.load_state_dict(state["opt_fake"])
        self.rng.set_state(state["rng"])

    def save(self):
        atomic_torch_save(self.run.checkpoint_path, self.state())

    def restore(self) -> bool:
        path = self.run.checkpoint_path
        if not path.exists():
            return False
        self.load(torch.load(path, map_location=self.device, weights_only=True))
        self.run.truncate_log(self.step)
        for grid in (self.run.dir / "samples").glob("step_*.png"):
            if int(grid.stem.split("_")[1]) > self.step:
                grid.unlink()
        return True

    # -- loop ---------------------------------------------------------------------------------------------

    def evaluate(self):
        cfg = self.cfg.eval
        metrics, per_prompt = self.backend.evaluate(self.ema, cfg.samples, cfg.seed)
        self.run.log({"kind": "eval", "step": self.step, **metrics, "per_prompt": per_prompt})
        if cfg.grid:
            self.backend.save_grid(self.ema, self.run.dir / "samples" / f"step_{self.step:06d}.png")
        if self.on_eval is not None:
            self.on_eval(self.step, metrics)
        return metrics

    def fit(self) -> dict:
        train = self.cfg.train
        resumed = self.restore()
        if not resumed:
            self.save()
            self.evaluate()
        bar = tqdm(total=train.steps, initial=self.step, desc=f"{self.method.name} {self.run.id}", unit="step",
                   disable=not self.progress, dynamic_ncols=True, mininterval=0.5)
        window: list[dict] = []
        started = time.perf_counter() - self.wall
        while self.step < train.steps:
            logs = {}
            for _ in range(self.method.fake_steps):
                logs.update(self.fake_update())
            logs.update(self.generator_update())
            self.step += 1
            self.guard(logs)
            self.update_ema()
            window.append(logs)
            if self.step % train.log_every == 0 or self.step == train.steps:
                record = {key: float(torch.stack([w[key] for w in window]).mean()) for key in window[0]}
                self.run.log({"kind": "train", "step": self.step, **record})
                bar.set_postfix(reward=f"{record['reward']:.3f}", div=f"{record.get('div', float('nan')):.3g}")
                window = []
            if (train.eval_every and self.step % train.eval_every == 0) or self.step == train.steps:
                self.evaluate()
            if self.step % train.ckpt_every == 0 or self.step == train.steps:
                self.wall = time.perf_counter() - started
                self.save()
            bar.update(1)
        bar.close()
        return self.summary()

    def guard(self, logs: dict):
        values = torch.stack([v.float() for v in logs.values()])
        if not bool(torch.isfinite(values).all()):
            bad = next(k for k, v in logs.items() if not torch.isfinite(v))
            raise Diverged(self.step, bad, float(logs[bad]))

    def summary(self) -> dict:
        evals = self.run.records("eval")
        config = self.cfg.to_dict()
        return {
            "run": self.run.id,
            "method": self.method.name,
            "backend": self.cfg.backend,
            "reward": self.cfg.reward,
            "steps": self.step,
            "wall_s": round(self.wall, 2),
            "metrics": scalars(evals[-1]),
            "initial": scalars(evals[0]),
            "per_prompt": evals[-1]["per_prompt"],
            "optimum": self.backend.describe_optimum(self.cfg.eval.samples, self.cfg.eval.seed),
            "protocol": {
                "world": config["world"], "eval_samples": self.cfg.eval.samples, "eval_seed": self.cfg.eval.seed,
                "generator": "ema" if self.cfg.train.ema else "raw",
            },
            "checkpoint_sha256": file_sha256(self.run.checkpoint_path),
            "provenance": provenance(config, str(self.device)),
        }


def scalars(record: dict) -> dict:
    """The metrics of an evaluation record, without its bookkeeping and per-prompt rows."""
    return {k: v for k, v in record.items() if k not in ("kind", "step", "per_prompt")}
