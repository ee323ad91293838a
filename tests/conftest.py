"""Shared test options: ``--runslow`` runs tests marked slow; ``--full-grid`` runs the whole
architecture grid instead of its pairwise covering subset."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption("--full-grid", action="store_true", help="test every architecture combination")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    # each test's compiles are its own: dynamo keeps 8 per function (ConfigurableGPT.forward across the suite's
    # models), and past that runs the function eagerly and compiles its callees instead, splitting later
    # tests' graphs (as gptlab's train() resets before each run)
    torch.compiler.reset()


@pytest.fixture(autouse=True)
def _plugins_imported_by_this_test_only() -> Iterator[None]:
    """An unknown component's error names the plugins this process imported: each test's own, as in a command."""
    import gptlab.plugins

    gptlab.plugins._imported_entries.clear()
    yield
    gptlab.plugins._imported_entries.clear()


HUB_SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Hugging Face's cache in a temporary directory, read in offline mode (HF_HUB_OFFLINE=1), as
    ``huggingface_hub`` lays it out; returns ``put(repo_id, model)``, which caches a
    ``transformers`` model (or anything with ``save_pretrained``) as that repository's main revision."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path_factory.mktemp("hf_hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def put(repo_id: str, model) -> None:
        folder = cache / ("models--" + repo_id.replace("/", "--"))
        model.save_pretrained(folder / "snapshots" / HUB_SNAPSHOT)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(HUB_SNAPSHOT)

    return put
