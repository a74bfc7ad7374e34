"""The test suite (a package, so that `tests.helpers` is ours even where another installed
distribution ships a top-level `tests` package, as emperor 1.0.5 does)."""
