"""The trainer core: one loop for every method and backend."""
