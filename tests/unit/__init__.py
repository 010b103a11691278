"""Unit tests: fast, in this process, against direct computations and hand-made values."""
