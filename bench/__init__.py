"""One-step text-to-image alignment bench: one trainer core, interchangeable methods, comparable numbers."""

__version__ = "0.1.0"
