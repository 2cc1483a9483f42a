"""Applications built on the library: the `keras-bidir` commands (demo, evaluate, bench).

Nothing in the core package imports from here.
"""
