"""Where a run's weights and architecture come from (gptlab.train.init_from): the notes a nanoGPT habit gets.
Resolution itself (resume, fine-tune, conflicts) is exercised end to end in test_loop and test_init_and_sample."""

from __future__ import annotations

from pathlib import Path

from gptlab.config.resolve import parse_run_args
from gptlab.train.init_from import preset_by_default


def test_a_config_file_without_a_preset_is_said(tmp_path: Path) -> None:
    """A nanoGPT config copied as it is (n_layer, n_head, n_embd, no arch_preset) trained OpenAI's GPT-2 (the
    default preset) where nanoGPT's train.py builds bias=False with exact GELU: said, with the lines that make
    either model; a file that names its preset, or sizes given on the command line, are the user's choice."""
    nano = tmp_path / "nano.py"
    nano.write_text("n_layer = 2\nn_head = 2\nn_embd = 32\n")
    said = preset_by_default(parse_run_args([str(nano)]))
    assert said == (
        "the config file sizes a model but names no arch_preset: the gpt2 preset (OpenAI's GPT-2) gives it "
        "tanh-approximated GELU, biased LayerNorms, biased Linear layers, where nanoGPT's train.py builds exact GELU "
        "with bias=False in Linear layers and LayerNorms alike: arch_preset = 'custom', normalization = "
        "'layernorm_nobias' in the file makes that model (arch_preset = 'gpt2' keeps this one)"
    )
    nano.write_text("n_layer = 2\nn_head = 2\nn_embd = 32\nbias = True\n")  # nanoGPT's bias=True: LayerNorms too
    assert preset_by_default(parse_run_args([str(nano)])) == (
        "the config file sizes a model but names no arch_preset: the gpt2 preset (OpenAI's GPT-2) gives it "
        "tanh-approximated GELU, where nanoGPT's train.py builds exact GELU with bias=True in Linear layers and "
        "LayerNorms alike: arch_preset = 'custom' in the file makes that model (arch_preset = 'gpt2' keeps this one)"
    )
    (tmp_path / "named.py").write_text("arch_preset = 'gpt2'\nn_layer = 2\n")
    # nanoGPT's own model spelled out without a preset: nothing the preset gave differs from it
    (tmp_path / "spelled.py").write_text(
        "n_layer = 2\nbias = False\nnormalization = 'layernorm_nobias'\ngelu_approximate = 'none'\n"
    )
    # nanoGPT's config/train_gpt2.py, which leaves the model at train.py's GPT-2 124M: as much another model here
    (tmp_path / "train_gpt2.py").write_text("batch_size = 12\nblock_size = 1024\ngradient_accumulation_steps = 40\n")
    assert preset_by_default(parse_run_args([str(tmp_path / "train_gpt2.py")])) == (
        "the config file names no arch_preset: the gpt2 preset (OpenAI's GPT-2) gives it tanh-approximated GELU, "
        "biased LayerNorms, biased Linear layers, where nanoGPT's train.py builds exact GELU with bias=False in Linear "
        "layers and LayerNorms alike: arch_preset = 'custom', normalization = 'layernorm_nobias' in the file makes "
        "that model (arch_preset = 'gpt2' keeps this one)"
    )
    for args in (
        [str(tmp_path / "named.py")],
        ["--n_layer=2"],
        [str(nano), "--arch_preset='custom'"],
        [str(tmp_path / "spelled.py")],
    ):
        assert preset_by_default(parse_run_args(args)) is None, args
