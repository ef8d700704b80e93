"""One module a page; each exposes `show(root, runs)`."""
