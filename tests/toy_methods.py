"""Methods written by "a user" for the tests: each is a few lines on the public seam, no core change."""

from dataclasses import dataclass

from bench.method import GeneratorBatch, Method


@dataclass
class Explodes(Method):
    """DI++-like until step 25, then a non-finite loss: the NaN guard must stop the run."""

    calls: int = 0

    def regulariser(self, b: GeneratorBatch):
        self.calls += 1
        scale = float("nan") if self.calls > 25 else 0.0
        return scale * b.x_t.flatten(1).sum(1)


@dataclass
class DiskFills(Method):
    """DI++-like until step 5, then the disk is full: the run ends failed, with the reason, in one line."""

    calls: int = 0

    def regulariser(self, b: GeneratorBatch):
        self.calls += 1
        if self.calls > 5:
            raise OSError(28, "No space left on device")
        return 0.0 * b.x_t.flatten(1).sum(1)
