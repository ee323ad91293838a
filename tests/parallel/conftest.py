"""The embedded dataset, prepared once (the training tests' fixture)."""

from tests.train.conftest import data_dir  # noqa: F401 (a fixture, used by name)
