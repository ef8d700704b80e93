"""The analytic world: a text-conditional Gaussian-mixture image distribution with exact scores."""
