"""The ``gptlab`` command as a whole: every mistake is one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptlab.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "gpt2", "--batch_size=0"], "batch_size=0 is invalid"),
        (["compare", "gpt2", "--dtype=bf16"], "dtype='bf16' is not one of .* \\(did you mean 'bfloat16'\\?\\)"),
        (["compare", "gpt2", "--out_dir=x"], "--out_dir is where --train writes"),
        (["arch", "gpt2", "--normalization=RMSNorm"], r"not one of .* \(did you mean 'rmsnorm'\?\)"),  # case alone
        (["arch", "gpt2", "--attention_backend=SDPA"], r"not one of .* \(did you mean 'sdpa'\?\)"),
        (["arch", "custom", "--normalization=scalenorm"], r"\); a component of your own is imported with --plugins="),
        (["compare", "gpt2", "--gpu_memory_gb=80"], "--gpu_memory_gb is an option of `gptlab plan`"),
        (["arch", "config/full_llama_124m.py", "--learning_rate=2"], "--learning_rate is a training setting"),
        (["flops", "run.yaml"], "config file 'run.yaml' does not exist"),  # a file, not "arch_preset='run.yaml'"
        (["compare", "gpt2", "configs/run.json"], "config file 'configs/run.json' does not exist"),
        # a name that is no preset, file or folder: said so, not as a config file or a key never typed
        (["compare", "gpt2", "out/compar/gpt2"], r"^gptlab: error: 'out/compar/gpt2' does not exist: name a preset \("),
        (["flops", "gpt3"], r"'gpt3' is no preset \(did you mean 'gpt2'\?\), and no file or folder here: name a"),
        (["arch", "README"], r"'README' is no preset, and no file or folder here: name a preset"),
        (["compare", "gpt2", "LICENSE"], r"'LICENSE' is a file, but not a preset \(custom, gpt2, .*\), a config file"),
        # another tool's GPU count is the command's own, not the nearest spelling (--gpu, an accelerator's name)
        (
            ["compare", "gpt2", "--gpus", "4"],
            r"--gpus is no option of this command: the number of GPUs is "
            r"--world_size: write --world_size=4$",
        ),
        (["compare", "gpt2", "--num_gpus=4"], r"--num_gpus is no option of this command: .* GPUs is --world_size=4$"),
        (["plan", "gpt2", "--nproc_per_node", "8"], r"the number of GPUs is --world_size: write --world_size=8$"),
        (["flops", "gpt2", "--gpus"], r"the number of GPUs is --num_gpus=N"),
        (["plan", "gpt2", "--gpus=4"], r"--gpus is no option of this command: the number of GPUs is --world_size=4$"),
        (["flops", "gpt2", "--world_size=8"], r"the number of GPUs is --num_gpus=8$"),
        # an accelerator's name: the --gpu it means
        (["compare", "gpt2", "--gpus", "H100"], r"'--gpus H100': --gpus is no option of this command: write --gpu=H1"),
        (["compare", "gpt2", "--gpus=H100"], r"gpus: not an architecture key \(did you mean 'gpu'\?\)"),
        (["arch", "gpt2", "--arch_preset=llama"], r"give the preset as the argument \(gptlab arch llama\)"),
        (["arch", "--n_layr=2"], r"unknown option --n_layr \(did you mean 'n_layer'\?\)"),  # was ignored
        (["arch", "gpt2", "--plugin=x"], r"\(did you mean 'plugins'\?\): 'gptlab arch' takes --no_params, --plugins"),
        (["arch", "config/full_llama_124m.py", "--dataset=x"], r"does not take \(a config file's vocabulary is"),
        (["flops", "config/full_llama_124m.py", "--data_dir=x"], r"give --vocab_size to set another\): it takes"),
        (["plan", "gpt2", "--world_size=2", "--world_size=4"], "--world_size is given twice"),  # was: the last
        (["compare", "gpt2", "--format=jsn"], r"invalid choice: 'jsn' .*\(did you mean 'json'\?\)"),
        (["doctor", "--dep"], r"'gptlab doctor' does not take --dep \(did you mean 'deep'\?\)"),
        (["export", "a", "b", "--HF"], r"does not take --HF \(did you mean 'hf'\?\)"),
        (["flops", "--gpu=h1000"], "h1000"),  # no H100 peak for a card that is none
        (["plan", "config/train_gpt2.py", "--gradient_accumulation_steps=8"], "this command's --grad_accum_steps"),
        (["flops", "--seq_len=abc"], "^gptlab flops: error: argument --seq_len: invalid int value: 'abc' \\(see"),
        (["train", "--device", "cpu"], "^gptlab: error: cannot parse '--device cpu': write --device=cpu$"),
        (["train", "--n_layer=2", "config/full_llama_124m.py"], "must come before the --key=value overrides"),
        (["sample", "--out_dir=x", "num_samples=1"], r"cannot parse argument 'num_samples=1': write --num_samples=1$"),
        # other tools' habits, each answered with what to write here
        (["train", "--compile", "false"], r"cannot parse '--compile false': write --compile=False$"),
        (["train", "--compile=false"], r"compile='false' has type str, expected bool \(write False: Python's"),
        (["train", "--config", "x.py"], r"name the config file first, without a flag: x.py --key=value"),
        (["train", "--eval_only"], r"'--eval_only': expected --key=value \(write --eval_only=True\)$"),
        (["train", "--resume"], r"\(write --init_from=resume\)$"),
        (["train", "--bf16"], r"\(write --dtype=bfloat16\)$"),
        (["train", "--no-compile"], r"\(write --compile=False\)$"),
        (["train", "--n_layer=2", "-n_layer=3"], r"'-n_layer=3': write --n_layer=3 \(two dashes\)$"),
        (["export", "a", "b", "-hf"], r"'-hf': write --hf \(two dashes\)$"),  # was argparse's '-h ... argument f'
        (["compare", "gpt2", "-dtype=bfloat16"], r"'-dtype=bfloat16': write --dtype=bfloat16 \(two dashes\)$"),
        (["plan", "--n_kv_head", "4"], r"cannot parse '--n_kv_head 4': write --n_kv_head=4$"),  # not preset '4'
        # a misspelt key, spaced: the key it means, not the typo (the next try refused it as unknown)
        (["plan", "--gpu_mem_gb", "24"], r"'--gpu_mem_gb 24': --gpu_mem_gb is no option of this command: write "),
        (["plan", "--gpu_mem_gb", "24"], r": write --gpu_memory_gb=24$"),
        (["plan", "--parallel", "fsdp"], r"'--parallel fsdp': --parallel is a training setting, which this command"),
        (["plan", "--paralel", "fsdp"], r"--paralel is no option of this command \(nor is --parallel"),
        (["plan", "--zzz_qqq", "1"], r"'--zzz_qqq 1': --zzz_qqq is no option of this command$"),
        # a training key that the command does not take: said so, not "corrected" to a near key it takes
        (["flops", "gpt2", "--batch_size", "4"], r"'--batch_size 4': --batch_size is a training setting, which this"),
        (["arch", "--batch_size", "4"], r"--batch_size is a training setting, which this command does not take$"),
        (["flops", "--batch_size"], r"\(--batch_size is a training setting, which this command does not take\)$"),
        (["flops", "gpt2", "--bach_size", "4"], r"no option of this command \(nor is --batch_size, a training setting"),
        (["flops", "--bach_size"], r"\(--bach_size is no option of this command \(nor is --batch_size, a training"),
        (["plan", "--gradient_accumulation_steps", "4"], r"does not take \(this command's --grad_accum_steps, per"),
        (["train", "--batch_sise", "4"], r"'--batch_sise 4': --batch_sise is no option of this command: write --b"),
        (["train", "--batch_sise", "4"], r": write --batch_size=4$"),
        (["sample", "--num_sample", "2"], r": write --num_samples=2$"),
        (["compare", "gpt2", "--max_iter", "4"], r": write --max_iters=4$"),  # compare --train's
        (["arch", "--bias"], r"\(write --bias=True\)$"),
        (["arch", "--bias", "llama"], r"'--bias llama': --bias takes True or False: write --bias=True, and 'llama' as"),
        (["sample", "--fsdp"], r"\(--fsdp is no option of this command\)$"),  # not --use_fsdp=True: not sample's
        (["flops", "--cpu"], r"\(--cpu is no option of this command\)$"),
        (["train", "--max_iter"], r"\(write --max_iters=VALUE\)$"),  # not --max_iter=VALUE, refused next
        # python -m torch.distributed.launch (and deepspeed) pass the local rank as an argument
        (["train", "--local-rank=0"], r"'--local-rank=0' is the legacy launcher's argument .* launch with torchrun"),
        (["train", "--local_rank=1"], r"'--local_rank=1' is the legacy launcher's argument"),
        (["train", "--local_rank", "0"], r"'--local_rank' is the legacy launcher's argument .* with torchrun"),
        (["arch", "--local_rank", "0"], r"'--local_rank' is the legacy launcher's argument .* with torchrun"),
        # where torch.distributed.launch puts it: before the script's own arguments (-m gptlab: before the command)
        (["train", "--local-rank=0", "config/x.py"], r"'--local-rank=0' is the legacy launcher's argument"),
        (["--local-rank=0", "train", "config/x.py"], r"'--local-rank=0' is the legacy launcher's argument"),
        (["arch", "--version"], r"\(--version is no option of this command\)$"),
        (["compare", "gpt2", "--n_layr"], r"\(write --n_layer=VALUE\)$"),
        (["doctor", "--dep", "x"], r"'gptlab doctor' does not take --dep x \(did you mean 'deep'\?\)"),  # no keys
        (["sample", "--compile"], r"\(write --compile=True\)$"),
        (["sample", "--device=cuda:x"], "device='cuda:x' is invalid"),
        (["sample", "--start=FILE:/nonexistent/prompt.txt", "--init_from=gpt2"], "cannot read the prompt file"),
        (["sample", "--temperature=1e999"], "temperature=inf is invalid"),
        (["sample", "--temperature=1e300"], r"temperature=1e\+300 is invalid: expected 0 \(greedy\) or a float in"),
        (["sample", "--num_samples=0"], "num_samples=0 is invalid"),
        (["sample", "--max_new_tokens=0"], r"max_new_tokens=0 is invalid: expected an integer in \[1, 2\*\*31 - 1\]$"),
        (["train", "--sample_at_end=True", "--sample_tokens=0"], r"sample_tokens=0 is invalid: expected a positive"),
        (["export", "x", ""], "argument out: expected a non-empty path"),
        (["prepare", "mine", "--input="], "argument --input: expected a non-empty path"),
        (["sample", f"--out_dir={'x' * 300}"], r"error: x{80}\.\.\.: File name too long$"),  # OSError's traceback
        (["export", "x" * 300, "dest"], r"error: x{80}\.\.\.: File name too long$"),
        (["compare", "gpt2", "--train=maybe"], r"^gptlab: error: --train=maybe: expected --train=True or"),
        (["compare", "gpt2", "--out_dir=x", "--train=False"], "--out_dir is where --train writes"),  # off: as absent
    ],
)
def test_command_mistakes_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command's mistakes, argparse's included, are one line on stderr and exit code 2."""
    import re

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors exit from the parser
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and re.search(message, err), err


def test_path_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"type": "iter", "iter": 0, "loss": 1.0, "dt_ms": 1.0}\n')
    (tmp_path / "file").write_text("")
    assert main(["report", str(run), f"--out={tmp_path / 'file'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(f"--out={str(tmp_path / 'file')!r} is a file: expected a directory (or a "
                                             "path to create one)")  # fmt: skip
    # a folder to be created inside a file: the key is named, not mkdir's errno line
    inside = tmp_path / "file" / "sub"
    for argv, key in (
        (["prepare", "notes", f"--input={run / 'log.jsonl'}", f"--data_dir={inside}"], "data_dir"),
        (["compare", "gpt2", "--train", f"--out_dir={inside}", "--max_iters=2"], "--out_dir"),
        (["compare", "gpt2", "--train=True", f"--out_dir={inside}", "--max_iters=2"], "--out_dir"),  # as training
        (["train", f"--out_dir={inside}", "--max_iters=1"], "out_dir"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{key}={str(inside)!r} cannot be created: {str(tmp_path / 'file')!r} is a file"), err
    # a folder named by a symbolic link to nothing (a moved scratch disk): mkdir's "File exists" said neither
    link = tmp_path / "scratch"
    link.symlink_to(tmp_path / "gone" / "scratch")
    missing = f"{str(link)!r} is a symbolic link to {str(tmp_path / 'gone' / 'scratch')!r}, which is missing"
    for argv, key in (
        (["prepare", "notes", f"--input={run / 'log.jsonl'}", f"--data_dir={link}"], f"data_dir={str(link)!r}"),
        (["train", f"--out_dir={link / 'run'}", "--max_iters=1"], f"out_dir={str(link / 'run')!r}"),
        (["export", str(run), str(link)], f"export destination={str(link)!r}"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{key} cannot be created: {missing}: create it, or remove the link"), err
    # other tools' names, in keys and values, get ours suggested
    for argv, hint in (
        (["compare", "gpt2", "--lr=1e-3"], "(did you mean 'learning_rate'?) (training keys need --train)"),
        (["train", "--device=gpu"], "(did you mean 'cuda'?)"),
        (["train", "--dtype=bf16"], "(did you mean 'bfloat16'?)"),
        (["train", "--dtype=float64"], "(did you mean 'float32'?)"),
        (["train", "--activation=swish"], "(did you mean 'silu'?)"),
        (["train", "--activation=gelu_new"], "(Hugging Face's tanh GELU is activation='gelu' with gelu_approximate="),
        (["train", "--normalization=rms_norm"], "(did you mean 'rmsnorm'?)"),
        (["train", "--init_from=gpt2-small"], "(did you mean 'gpt2'?)"),  # difflib's nearest: the 1.5B gpt2-xl
        (["train", "--init_from=gpt2-355M"], "(did you mean 'gpt2-medium'?)"),
        (["train", "--init_from=gpt2_1.5B"], "(did you mean 'gpt2-xl'?)"),  # the alias looked up folded
        (["train", "--init_from=gpt2-117M"], "(did you mean 'gpt2'?)"),  # OpenAI's first name for it
        (["train", "--out_dir=None"], "out_dir=None has type NoneType, expected str"),  # not a folder 'None'
        (["train", "--arch_preset=GPT-2"], "(did you mean 'gpt2'?)"),  # the case and a hyphen
        (["train", "--training.steps=10"], "did you mean --max_iters=10?"),
        (["train", "--tie_word_embeddings=False"], "(did you mean 'weight_tying'?)"),  # HF's name
        (["train", "--n_positions=64"], "(did you mean 'block_size'?)"),  # HF GPT-2's (difflib: 'norm_position')
        (["train", "--max_position_embeddings=64"], "(did you mean 'block_size'?)"),  # not 'position_encoding'
        (["train", "--layer_norm_epsilon=1e-6"], "(did you mean 'norm_eps'?)"),
        (["train", "--n_inner=3072"], "(did you mean 'd_ff'?)"),
        (["train", "--min_learning_rate=0.0"], "(did you mean 'min_lr'?)"),  # difflib: 'learning_rate'
        (["train", "--max-iters"], "(write --max_iters=VALUE)"),
        (["train", "--prompt"], "(write --sample_prompt=VALUE)"),  # the train key nearest sample's alias
        (["sample", "--prompt=hi"], "unknown sample key 'prompt' (did you mean 'start'?)"),
    ):
        assert main(argv) == 2, argv
        assert hint in capsys.readouterr().err, argv


@pytest.mark.parametrize("words", ["can't allocate memory", "not enough memory"])  # Linux's, Windows'
def test_an_allocation_failure_is_one_line(
    words: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """gptlab peak --size=100000 asks the CPU for 40 GB: one line, not the allocator's traceback."""
    import gptlab.telemetry.hardware as hardware

    def allocate(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"DefaultCPUAllocator: {words}: you tried to allocate 40000000000 bytes.")

    monkeypatch.setattr(hardware, "measure_peak_flops", allocate)
    assert main(["peak", "--device=cpu", "--size=100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: out of memory (DefaultCPUAllocator") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("script, flag", [("train", "--help"), ("sample", "-h")])
def test_root_scripts_print_help(script: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """python train.py --help is the gptlab command's help for it (it was 'write --help=VALUE'), keys listed."""
    from gptlab.train.cli import entry, run_sample, run_train

    assert entry(run_train if script == "train" else run_sample, [flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gptlab {script}")
    if script == "train":
        assert "learning_rate" in out and "n_kv_head" in out


@pytest.mark.parametrize("argv", [["train", "--version"], ["sample", "-V"], ["train", "config/train_gpt2.py", "-V"]])
def test_train_and_sample_print_the_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """python train.py --version and gptlab train --version: gptlab's version (they were 'write --version=VALUE')."""
    from gptlab import __version__
    from gptlab.train.cli import entry, run_sample, run_train

    assert entry(run_train if argv[0] == "train" else run_sample, argv[1:]) == 0
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"gptlab {__version__} (torch ") for line in lines)


# Ctrl-C while torch is imported (seconds, before a command's own code runs): simulated by a KeyboardInterrupt
# raised from the import of torch, wherever it happens.
_INTERRUPT_TORCH_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt

sys.meta_path.insert(0, Interrupt())
"""


@pytest.mark.parametrize(
    "launch",
    [
        "import runpy; sys.argv = ['train.py', '--max_iters=1']; runpy.run_path('train.py', run_name='__main__')",
        "import runpy; sys.argv = ['sample.py']; runpy.run_path('sample.py', run_name='__main__')",
        "from gptlab.cli import main; sys.exit(main(['train', '--max_iters=1']))",  # the console script's import
        "from gptlab.cli import main; sys.exit(main(['arch', 'llama']))",
    ],
)
def test_a_ctrl_c_while_torch_is_imported_is_one_line_and_130(launch: str, tmp_path: Path) -> None:
    """A Ctrl-C in the first seconds printed the traceback of an import: the package no longer imports torch
    when a command's entry is imported, so the command's own handler says it in one line."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_TORCH_IMPORT + launch],
        cwd=root, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert "aborted (Ctrl-C)" in done.stderr


def test_the_package_imports_torch_only_when_asked() -> None:
    """The commands' entries import no torch (see above); what ``import gptlab`` gave is still there."""
    import subprocess
    import sys

    code = (
        "import sys, gptlab, gptlab.cli, gptlab.train.cli; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'ConfigurableGPT' in dir(gptlab); from gptlab import ConfigurableGPT; import torch; "
        "assert isinstance(ConfigurableGPT(gptlab.get_debug_config('llama')), torch.nn.Module); "
        "assert 'rmsnorm' in gptlab.model.NORM_REGISTRY"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_other_scripts_keep_their_own_help() -> None:
    """entry() prints gptlab's help only for train.py and sample.py; bench scripts parse their own -h."""
    from gptlab.train.cli import entry

    seen: list = []
    assert entry(lambda argv: seen.append(argv) or 7, ["--help"]) == 7 and seen == [["--help"]]


def test_any_command_without_a_cpp_compiler_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gptlab sample --compile=True` on Windows without cl.exe: the one line training gives, not a traceback."""
    import gptlab.train.cli as train_cli

    def compile_fails(args: object) -> int:
        try:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")
        except RuntimeError as e:
            raise RuntimeError("backend='inductor' raised:\nInductorError: see above") from e

    monkeypatch.setattr(train_cli, "run_sample", compile_fails)
    assert main(["sample", "--compile=True"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: torch.compile found no working C++ compiler (InvalidCxxCompiler")
    assert len(err.strip().splitlines()) == 1


def test_a_finished_job_survives_a_stdout_that_cannot_encode_its_paths(tmp_path: Path) -> None:
    """Windows' cp1252 for a redirected stdout (LANG=C alike): the work was done, then printing a folder's
    name ended the command with a UnicodeEncodeError, exit 1, a failed job to the scheduler."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    text = tmp_path / "in.txt"
    text.write_text("hello world, hello gptlab\n" * 200, encoding="utf-8")
    data = tmp_path / "数据"
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONIOENCODING": "cp1252"}
    cmd = [sys.executable, "-m", "gptlab", "prepare", "mine", "--input", str(text), "--data_dir", str(data)]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert str(tmp_path / "??" / "mine").encode() in done.stdout and (data / "mine" / "meta.json").is_file()


def test_a_write_the_storage_refuses_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk or a read-only folder met outside the checkpoint's and the log's own checks (config.json,
    summary.json, a report's plots, a dataset's files) was a traceback and exit 1."""
    import errno

    import gptlab.report
    from gptlab.errors import storage_refused
    from gptlab.train.cli import entry

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "r" / "loss.png"))

    monkeypatch.setattr(gptlab.report, "build_report", refuse)
    (tmp_path / "log.jsonl").write_text("")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    # no free space named: beside the point for a read-only mount or a permission
    assert err == f"gptlab: error: cannot write {tmp_path / 'r' / 'loss.png'}: Read-only file system\n"

    def full(args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "summary.json"))

    assert entry(full, []) == 2 and "No space left on device (" in capsys.readouterr().err  # its free space, named
    assert storage_refused(OSError(errno.EINVAL, "Invalid argument")) is None  # others keep their traceback


def test_an_error_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank's stderr is torchrun's one pipe: a line written as text, then newline, ran into the next
    rank's ('...as in nanoGPT)[rank 1] error: ...')."""
    import sys

    from gptlab.errors import print_error_line

    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            writes.append("<flush>")

    monkeypatch.setattr(sys, "stderr", Recorder())
    print_error_line("[rank 1] error: gradient_accumulation_steps=1 must be divisible")
    assert writes == ["[rank 1] error: gradient_accumulation_steps=1 must be divisible\n", "<flush>"]


@pytest.mark.parametrize("command", ["prepare", "export"])
def test_help_shows_text_not_rest_markup(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"gptlab {command} " in out and "``" not in out


def test_every_subcommand_describes_itself_and_every_option() -> None:
    """`gptlab CMD -h` says what CMD does (a description, not only the one-line list entry) and what each option
    is for: peak --iters, compare --format and report --title had no help, presets/peak/doctor no description."""
    import argparse

    from gptlab.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        if not sub.description:
            missing.append(f"{name}: description")
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: help")
    assert missing == []
