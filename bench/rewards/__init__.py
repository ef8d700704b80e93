"""Rewards: differentiable `reward(images, cond) -> Tensor[B]` with a `name` and a `version`."""
