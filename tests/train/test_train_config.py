"""TrainConfig, config files and --key=value overrides; learning-rate schedules."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from gptlab import ConfigError
from gptlab.config.files import load_config_file
from gptlab.config.resolve import parse_run_args
from gptlab.config.train import TrainConfig
from gptlab.train.schedule import get_lr

ROOT = Path(__file__).resolve().parents[2]


CONFIG_FILES = sorted(p.stem for p in (ROOT / "config").glob("*.py"))  # every shipped config file


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_design_document_config_files_load(name: str) -> None:
    run = parse_run_args([str(ROOT / "config" / f"{name}.py")])
    assert run.arch.n_layer >= 1 and run.train.max_iters > 0


def test_a_typed_preset_must_take_effect_over_a_config_file() -> None:
    """The design document's --arch_preset on its full_custom.py, which sets every choice itself, trained the
    file's mix under the preset's name: refused, naming the keys; on a file of sizes only, the preset applies."""
    with pytest.raises(ConfigError, match=r"arch_preset='llama' would not take effect: .*ffn_type='standard'"):
        parse_run_args([str(ROOT / "config/full_custom.py"), "--arch_preset=llama"])
    assert parse_run_args([str(ROOT / "config/full_custom.py"), "--arch_preset=custom"]).arch.ffn_type == "standard"
    run = parse_run_args([str(ROOT / "config/full_gpt2_124m.py"), "--arch_preset=llama"])
    assert run.arch.get_architecture_name() == "pre-rmsnorm_rope_swiglu_untied"
    # untyped (the default gpt2, or the file's own), or every key typed: nothing a file overrode, no refusal
    llama_like = ["--normalization=rmsnorm", "--position_encoding=rope", "--ffn_type=swiglu", "--bias=False",
                  "--weight_tying=False", "--activation=silu"]  # fmt: skip
    assert parse_run_args(llama_like).arch.ffn_type == "swiglu"
    assert parse_run_args(["--arch_preset=gpt2", *llama_like]).arch.ffn_type == "swiglu"


def test_a_resume_with_its_config_file_takes_the_runs_own_preset(tmp_path: Path) -> None:
    """On a resume the architecture is the checkpoint's: the file's keys beside a typed preset are not a clash."""
    import io

    from gptlab.data.datasets import prepare_dataset
    from gptlab.train.launch import train
    from tests.train.conftest import tiny_args

    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    config = tmp_path / "ln.py"
    config.write_text("arch_preset = 'llama'\nnormalization = 'layernorm'\n")
    args = tiny_args(tmp_path / "data", tmp_path / "run", max_iters=1, eval_interval=1, eval_iters=1)
    train(parse_run_args([str(config), *args]), stream=io.StringIO())
    assert "--arch_preset='llama'" in args  # typed again on the resume, with the file's normalization
    resumed = parse_run_args([str(config), *args, "--init_from='resume'"])
    assert resumed.arch.normalization == "layernorm"


def test_config_file_then_overrides() -> None:
    run = parse_run_args(
        [
            str(ROOT / "config/full_gpt2_124m.py"),
            "--normalization=rmsnorm",
            "--position_encoding=rope",
            "--batch_size=3",
            "--learning_rate=1",
            "--compile=False",
            "--device=cpu",
        ]
    )
    assert run.arch.normalization == "rmsnorm" and run.arch.position_encoding == "rope"
    assert run.arch.bias  # the rest of the gpt2 preset stays
    assert run.train.batch_size == 3 and run.train.compile is False
    assert run.train.learning_rate == 1.0 and isinstance(run.train.learning_rate, float)
    assert {"batch_size", "normalization", "n_layer"} <= run.explicit


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--n_layr=2"], "did you mean 'n_layer'"),
        (["--learning_rat=1e-3"], "did you mean 'learning_rate'"),
        (["--batch_size=twelve"], "batch_size='twelve' has type str, expected int"),
        (["--compile=yes"], "compile='yes' has type str, expected bool"),
        (["--learning_rate=nan"], "learning_rate=nan is invalid: expected a finite float$"),  # float() reads it
        (["--peak_tflops=inf"], "peak_tflops=inf is invalid: expected a finite float or None$"),
        (["--peak_tflops=989e12"], r"peak_tflops=989000000000000.0 is above 100,000 TFLOPS per device: it is TFLOPS"),
        (["--max_iters=1.5"], "max_iters=1.5 has type float, expected int$"),
        (["--max_iters=1e3"], r"max_iters=1000.0 has type float, expected int \(write 1000\)$"),
        (["--device=tpu"], "device='tpu' is not one of"),
        (["--dtype=fp16"], "dtype='fp16'"),
        (["--lr_schedule=cosin"], "did you mean 'cosine'"),
        (["--arch_preset=lama"], "did you mean 'llama'"),
        (["--normalization=rms"], "normalization='rms'"),
        (["--gradient_accumulation_steps=0"], "gradient_accumulation_steps=0"),
        (["--beta2=1.5"], "beta2=1.5"),
        (["--use_fsdp=True", "--use_zero1=True"], "exclude each other"),
        (["n_layer=2"], "no such|does not exist"),
        (["--n_layer"], "expected --key=value"),
        (["--min_lr=1.0", "--learning_rate=0.1"], "min_lr"),
        (["--compile_mode=reduce_overhead"], "did you mean 'reduce-overhead'"),
        (["--use_fsdp=True", "--compile_mode='max-autotune'"], "captures CUDA graphs"),
        (["--loss_chunk_size=-8"], "loss_chunk_size=-8"),
        (["--sdpa_backend=fa2"], r"sdpa_backend='fa2' is not one of 'auto', 'cudnn', 'efficient', 'flash', 'math'"),
        (["--residual_dtype=bf16"], r"residual_dtype='bf16' is not one of .*did you mean 'bfloat16'"),
        (
            ["--dtype=float32", "--residual_dtype=bfloat16"],
            r"residual_dtype='bfloat16' is invalid with dtype='float32'",
        ),
        (["--dtype=bfloat16", "--residual_dtype=float16"], r"expected 'auto', 'float32' or the run's dtype"),
        (
            ["--dtype=bfloat16", "--use_fsdp=True", "--residual_dtype=float32"],
            r"residual_dtype='float32' is not available with parallel='fsdp'",
        ),
        # typed keys the other settings make meaningless
        (["--decay_lr=False", "--warmup_iters=100"], r"warmup_iters=100 has no effect with decay_lr=False"),
        (["--lr_schedule='constant'", "--min_lr=1e-5"], r"min_lr=1e-05 has no effect with lr_schedule='constant'"),
        (["--wsd_decay_frac=0.5"], r"wsd_decay_frac=0.5 has no effect with lr_schedule='cosine'"),
        (
            ["--compile=False", "--compile_mode='max-autotune'"],
            r"compile_mode='max-autotune' has no effect with compile",
        ),
        (["--sample_tokens=50"], r"sample_tokens=50 has no effect with sample_at_end=False"),
        (["--wandb_project='p'"], r"wandb_project='p' has no effect with wandb_log=False"),
        (["--device=cpu", "--backend=nccl"], r"backend='nccl' needs CUDA tensors"),
        (["--device=cpu", "--backend=nccl", "--eval_only=True"], r"backend='nccl' needs CUDA tensors"),
        # device auto on a machine without CUDA trains on gloo: a typed nccl was silently ignored
        pytest.param(
            ["--backend=nccl"],
            r"needs CUDA tensors, but device='auto' \(auto: this machine has no CUDA device\)",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="auto is CUDA here"),
        ),
        (["--warmup_iters=3", "--lr_decay_iters=1"], r"lr_decay_iters=1 is smaller than warmup_iters=3"),
        (["--warmup_iters=5", "--lr_decay_iters=5"], r"lr_decay_iters=5 is equal to warmup_iters=5: .* < lr_decay"),
        (["--wsd_decay_frac=1.5"], r"wsd_decay_frac=1.5 is invalid: expected a float in \[0, 1\]"),
        # a negative rate trains by gradient ascent; negative decay grows the weights; a negative clip is no clip
        *[
            ([f"--{k}=-1e-3"], rf"^{k}=-0.001 is invalid: expected a finite float >= 0$")
            for k in ("learning_rate", "min_lr", "weight_decay", "grad_clip")
        ],
        # names and values
        (["--out_dir="], r"out_dir='' is invalid: expected a non-empty name or path"),
        (["--init_from="], r"init_from='' is invalid"),
        (
            ["--seed=99999999999999999999"],
            r"seed=99999999999999999999 is invalid: expected an integer in \[0, 2\*\*64\)",
        ),
        (["--device=cuda:abc"], r"device='cuda:abc' is invalid: expected auto, cpu, cuda, cuda:N"),
        (["--device=cpu:1"], r"device='cpu:1' is invalid"),
        (["--device=mps:x"], r"device='mps:x' is invalid"),
        (["--device=cuda:01"], r"device='cuda:01' is invalid"),  # torch refuses it: one line here first
        # command-line habits
        (["--n_layer=4", "--n_layer=6"], r"--n_layer is given twice \(4, then 6\): give it once"),
        (["--n-layer=4"], r"'n-layer' is not a valid key name: did you mean --n_layer=4\?"),
        (["--lr=1e-3"], r"did you mean 'learning_rate'"),
        (["--grad_accum=4"], r"did you mean 'gradient_accumulation_steps'"),
        (["--n_layer"], r"write --n_layer=VALUE"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_run_args(args)
    assert "\n" not in str(info.value)


def test_a_misspelt_config_file_gets_the_nearest_in_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config/full_llama_12m.py beside config/full_llama_124m.py: that name, not the hint for a wheel install
    (which is for a config/ folder that is not there)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "full_llama_124m.py").write_text("n_layer = 2\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'config/full_llama_12m\.py' does not exist \(did you mean 'full_llama"):
        parse_run_args(["config/full_llama_12m.py"])
    monkeypatch.chdir(tmp_path / "config")
    with pytest.raises(ConfigError, match="not installed with the package: run from a clone's root"):
        parse_run_args(["config/full_llama_124m.py"])


def test_overwrite_on_a_resume_is_refused_when_typed() -> None:
    """A resume continues the files in out_dir, so a typed --overwrite=True would replace nothing."""
    from gptlab.config.train import TrainConfig, check_train_keys_take_effect

    resume = TrainConfig(init_from="resume", overwrite=True)
    with pytest.raises(ConfigError, match=r"overwrite=True has no effect with init_from='resume'"):
        check_train_keys_take_effect(resume, {"overwrite"})
    check_train_keys_take_effect(resume, set())  # from a config file: accepted
    check_train_keys_take_effect(TrainConfig(overwrite=True), {"overwrite"})


def test_a_typed_use_flag_set_false_against_its_parallel_mode_is_refused(tmp_path: Path) -> None:
    """`--use_fsdp=False` over a config file's parallel='fsdp' (or typed beside it) ran FSDP anyway, silently:
    parallel decides; a False use_* typed where it does nothing is one line. From a file, or True, it passes."""
    from gptlab.config.train import check_train_keys_take_effect

    for flag, mode in (("use_fsdp", "fsdp"), ("use_zero1", "zero1")):
        train = TrainConfig(parallel=mode)
        with pytest.raises(ConfigError, match=rf"^{flag}=False has no effect with parallel='{mode}', which runs"):
            check_train_keys_take_effect(train, {flag})
        check_train_keys_take_effect(train, set())  # a config file's False: nanoGPT-style files spell it out
        check_train_keys_take_effect(TrainConfig(parallel="ddp"), {flag})  # False and not that mode: as asked
    config = tmp_path / "fsdp.py"
    config.write_text("parallel = 'fsdp'\n")
    with pytest.raises(ConfigError, match=r"use_fsdp=False has no effect with parallel='fsdp'"):
        parse_run_args([str(config), "--use_fsdp=False"])


def test_string_keys_keep_numeric_text_and_voided_keys_only_when_typed(tmp_path: Path) -> None:
    """--wandb_run_name=2024 is the name '2024', not a type error; a config file may spell out a key its
    other settings void (nanoGPT's files do), only a typed one is refused."""
    run = parse_run_args(
        ["--wandb_log=True", "--wandb_run_name=2024", "--out_dir=123", "--sample_at_end=True", "--sample_prompt=1.5"]
    )
    assert (run.train.wandb_run_name, run.train.out_dir, run.train.sample_prompt) == ("2024", "123", "1.5")
    # any literal that is not a string: a prompt of Python source ('None', 'True', '{}', '(1, 2)') is its text
    for prompt in ("None", "True", "{}", "(1, 2)", "[x]"):
        assert parse_run_args(["--sample_at_end=True", f"--sample_prompt={prompt}"]).train.sample_prompt == prompt
    config = tmp_path / "nanogpt_style.py"
    config.write_text(
        "decay_lr = False\nwarmup_iters = 100\nmin_lr = 6e-5\nwandb_project = 'owt'\n"
        "backend = 'nccl'\ndevice = 'cpu'\n"  # nanoGPT's train.py header: a CPU run ignores its backend
    )
    assert parse_run_args([str(config)]).train.warmup_iters == 100
    with pytest.raises(ConfigError, match=r"make warmup_iters < lr_decay_iters"):  # both typed: no "set it too"
        parse_run_args(["--warmup_iters=5", "--lr_decay_iters=1"])
    assert parse_run_args([str(config), "--decay_lr=True"]).train.decay_lr  # a typed key that does act
    assert parse_run_args(["--compile=True", "--compile_mode='max-autotune'"]).train.compile_mode == "max-autotune"


def test_short_decay_is_refused_only_where_typed() -> None:
    """A run saved with lr_decay_iters < warmup_iters (nanoGPT allows it: the warmup runs to the end)
    still resumes and evaluates; typing such a pair now is refused with what to set."""
    from gptlab.config.resolve import resolve_run_config

    saved = dict(lr_decay_iters=3, warmup_iters=50, max_iters=5)
    assert resolve_run_config(saved, typed=()).train.lr_decay_iters == 3
    assert resolve_run_config({**saved, "eval_only": True}, typed={"lr_decay_iters", "eval_only"}).train.eval_only
    with pytest.raises(ConfigError, match=r"lr_decay_iters=3 is smaller than warmup_iters=50: .* set --warmup_iters"):
        resolve_run_config(saved, typed={"lr_decay_iters"})


def test_a_config_file_reads_the_defaults_and_earlier_files_as_nanogpt_configs_do(tmp_path: Path) -> None:
    """nanoGPT runs its config files in train.py's globals: `lr_decay_iters = max_iters` after a file that set
    max_iters, `min_lr = learning_rate / 10` of the default, were a NameError here. Only what a file sets is
    its own: a read default is not collected (nor made explicit), and the file's functions see its names."""
    from gptlab.config.resolve import parse_run_args
    from gptlab.config.train import TrainConfig

    (tmp_path / "first.py").write_text("max_iters = 6\nplugins = ''\n")
    (tmp_path / "then.py").write_text(
        "import math\n"
        "def _warmup():\n    return int(math.sqrt(4)) + max_iters\n"
        "lr_decay_iters = max_iters\nmin_lr = learning_rate / 10\nwarmup_iters = _warmup()\n"
        "_doubled = [max_iters * i for i in range(2)]\n"
    )
    assert load_config_file(tmp_path / "then.py", visible={"max_iters": 6, "learning_rate": 1e-3}) == {
        "lr_decay_iters": 6, "min_lr": 1e-4, "warmup_iters": 8,
    }  # fmt: skip
    run = parse_run_args([str(tmp_path / "first.py"), str(tmp_path / "then.py"), "--device=cpu"])
    assert (run.train.lr_decay_iters, run.train.warmup_iters) == (6, 8)
    assert run.train.min_lr == TrainConfig.learning_rate / 10 and "learning_rate" not in run.explicit
    (tmp_path / "builtin.py").write_text("max_iters = eval(compile('1 + 1', '<x>', 'eval'))\n")
    assert load_config_file(tmp_path / "builtin.py") == {"max_iters": 2}  # compile() is Python's, not the key
    (tmp_path / "reg.py").write_text(
        "import torch\nfrom gptlab.model.registry import ACTIVATION_REGISTRY\n"
        "@ACTIVATION_REGISTRY.register('reads_defaults_t')\nclass _Sq(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x * x\n"
        "lr_decay_iters = max_iters\n"
    )
    from gptlab.model.registry import ACTIVATION_REGISTRY

    try:  # imported again as a plugin on resume, it could not read them: said now, not then
        with pytest.raises(ConfigError, match=r"registers components, .* it may not read \['max_iters'\]"):
            load_config_file(tmp_path / "reg.py")
    finally:
        ACTIVATION_REGISTRY.pop("reads_defaults_t", None)
    (tmp_path / "arch.py").write_text("n_head = n_embd // 64\n")
    with pytest.raises(ConfigError, match=r"NameError: name 'n_embd' is not defined \(.*set it first\)$"):
        load_config_file(tmp_path / "arch.py")
    # what a file sets through globals(), as nanoGPT's train.py globals take it, is its setting too (it was
    # dropped silently), and checked as one
    (tmp_path / "via_globals.py").write_text(
        "globals().update(batch_size=9, n_layer=3)\ndef _more():\n    global max_iters\n    max_iters = 7\n_more()\n"
    )
    assert load_config_file(tmp_path / "via_globals.py") == {"batch_size": 9, "n_layer": 3, "max_iters": 7}
    (tmp_path / "typo_globals.py").write_text("globals()['n_layr'] = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'n_layr' \(did you mean 'n_layer'\?\)"):
        load_config_file(tmp_path / "typo_globals.py")


def test_a_config_files_imported_values_are_its_globals_and_an_imported_key_a_setting(tmp_path: Path) -> None:
    """`from math import pi` (or a * import, or torch's float16) was refused as an unknown key 'pi' with a hint
    about helpers the user never wrote; in nanoGPT it is a harmless global. A key imported from a module of
    one's own settings sets it, as nanoGPT's exec would."""
    (tmp_path / "shared_t.py").write_text("learning_rate = 3e-4\nunrelated = 1\n")
    (tmp_path / "cfg.py").write_text(
        "from math import pi, tau as _tau\nfrom math import *\nimport os.path\nfrom torch import float16\n"
        "from shared_t import learning_rate, unrelated\nn_layer = 2\nmin_lr = pi * 1e-5\n"
    )
    try:
        assert load_config_file(tmp_path / "cfg.py") == {"n_layer": 2, "min_lr": math.pi * 1e-5, "learning_rate": 3e-4}
    finally:
        sys.modules.pop("shared_t", None)
    optional = "try:\n    import nosuch_t\nexcept ImportError:\n    nosuch_t = None\n"  # an optional import's fallback
    (tmp_path / "optional.py").write_text(
        optional + "try:\n    from math import tau\nexcept ImportError:\n    tau = 6.28\n"
    )
    assert load_config_file(tmp_path / "optional.py") == {}
    (tmp_path / "typo.py").write_text("from math import pi\nn_layr = pi\n")  # an assigned typo is still one
    with pytest.raises(ConfigError, match=r"unknown key 'n_layr'"):
        load_config_file(tmp_path / "typo.py")
    # an import inside a function or class binds no global; a name imported and then assigned is a setting
    for typo, source in (
        ("wandb", "def _f():\n    import wandb\nwandb = True\n"),
        ("max_iter", "def _s():\n    from math import cos as max_iter\nmax_iter = 100\n"),
        ("batchsize", "class _H:\n    import json as batchsize\nbatchsize = 8\n"),
        ("e", "from math import e\ne = 12\n"),
        ("warmup", "from shared_t import *\nwarmup = 100\n"),
        ("yaml_t", "try:\n    import nosuch_t\nexcept ImportError:\n    yaml_t = None\n"),  # a fallback of no import
    ):
        (tmp_path / "shared_t.py").write_text("warmup = 100\n")
        (tmp_path / "typo.py").write_text(source)
        try:
            with pytest.raises(ConfigError, match=f"unknown key {typo!r}"):
                load_config_file(tmp_path / "typo.py")
        finally:
            sys.modules.pop("shared_t", None)


@pytest.mark.parametrize(
    "key", ["batch_size", "gradient_accumulation_steps", "eval_iters", "dist_timeout", "max_iters", "sample_tokens"]
)
def test_counts_past_int32_are_refused_in_one_line(key: str) -> None:
    """10**30 sequences hung the memory planner; 10**30 eval_iters or micro-steps overflowed inside torch after the
    run's log was written; a dist_timeout of 10**30 s overflowed timedelta under torchrun."""
    with pytest.raises(
        ConfigError, match=rf"^{key}=1000000000000000000000000000000 is invalid: expected .*2\*\*31 - 1"
    ):
        TrainConfig(**{key: 10**30})
    TrainConfig(**{key: 2**31 - 1, **({"lr_decay_iters": 2**31 - 1} if key == "max_iters" else {})})


def test_config_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_key = tmp_path / "bad.py"
    bad_key.write_text("n_layers = 3\n")
    with pytest.raises(ConfigError, match=r"bad.py.*unknown key 'n_layers'.*did you mean 'n_layer'"):
        load_config_file(bad_key)
    helper = tmp_path / "helper.py"
    helper.write_text("tokens_per_step = 524288\nbatch_size = tokens_per_step // 1024\n")  # a helper, named so
    with pytest.raises(ConfigError, match=r"unknown key 'tokens_per_step'; .* is named with a leading underscore$"):
        load_config_file(helper)
    helper.write_text("_tokens_per_step = 524288\nbatch_size = _tokens_per_step // 1024\n")
    assert load_config_file(helper) == {"batch_size": 512}
    broken = tmp_path / "broken.py"
    broken.write_text("n_layer = (\n")
    with pytest.raises(ConfigError, match=r"broken\.py' failed: SyntaxError"):
        load_config_file(broken)
    # an error as it runs names its line in the file, the deepest (a helper function's), as a traceback would
    broken.write_text("def _steps():\n    return 1 / 0\n\nbatch_size = 4\nmax_iters = _steps()\n")
    with pytest.raises(ConfigError, match=r"broken\.py', line 2 failed: ZeroDivisionError: division by zero$"):
        load_config_file(broken)
    with pytest.raises(ConfigError, match="must come before"):
        parse_run_args(["--n_layer=2", str(bad_key)])
    with pytest.raises(ConfigError, match=r"bad' does not exist \(did you mean '.*bad\.py'\?\)"):
        load_config_file(tmp_path / "bad")  # the .py left out
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "train_char.py").write_text("n_layer = 2\n")
    monkeypatch.chdir(tmp_path)  # nanoGPT's commands name config/train_char.py: the folder left out
    with pytest.raises(ConfigError, match=r"^config file 'train_char.py' does not exist \(did you mean 'config/train_"):
        load_config_file("train_char.py")
    for directory in (".", "/"):
        with pytest.raises(ConfigError, match=r"is a directory$"):
            load_config_file(directory)
    # argparse habits: a space instead of '=', one dash
    with pytest.raises(ConfigError, match=r"^cannot parse '--n_layer 2': write --n_layer=2$"):
        parse_run_args(["--n_layer", "2"])
    with pytest.raises(ConfigError, match=r"^cannot parse argument '-n_layer=2': write --n_layer=2 \(two dashes\)$"):
        parse_run_args(["-n_layer=2"])
    ok = tmp_path / "ok.py"
    ok.write_text('"""doc"""\nimport math\nn_layer = 2\n_private = 1\nlearning_rate = math.sqrt(4e-8)\nprint()\n')
    assert load_config_file(ok) == {"n_layer": 2, "learning_rate": pytest.approx(2e-4)}
    # a file that would set nothing is refused, never run as a default training: YAML, JSON, a folder
    cases = {
        "run.yaml": ("n_layer = 2\n", r"'.*run\.yaml' is not a \.py file: config files are Python"),
        "yaml.py": (
            "n_layer: 1\nmax_iters: 3\n",
            r"line 1: `n_layer: 1` sets nothing \(an annotation\): write n_layer = 1",
        ),
        "json.py": ('{"n_layer": 1}\n', r'line 1: `\{"n_layer": 1\}` is an expression that sets nothing'),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=match):
            parse_run_args([str(tmp_path / name)])
    with pytest.raises(ConfigError, match="is a directory"):
        parse_run_args([str(tmp_path)])


def _cfg(**kw) -> TrainConfig:
    base = dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    return TrainConfig(**{**base, **kw})


def test_cosine_schedule_matches_nanogpt() -> None:
    c = _cfg()
    assert get_lr(0, c) == pytest.approx(1 / 11) and get_lr(9, c) == pytest.approx(10 / 11)
    assert get_lr(10, c) == pytest.approx(1.0)
    assert get_lr(60, c) == pytest.approx(0.1 + 0.5 * 0.9)  # halfway: cos(pi/2) = 0
    assert get_lr(110, c) == pytest.approx(0.1) and get_lr(500, c) == pytest.approx(0.1)
    lrs = [get_lr(i, c) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_constant_wsd_and_no_decay() -> None:
    assert get_lr(50, _cfg(lr_schedule="constant")) == 1.0 and get_lr(5, _cfg(lr_schedule="constant")) < 1.0
    wsd = _cfg(lr_schedule="wsd", wsd_decay_frac=0.2)  # decay over iters 88..110
    assert get_lr(50, wsd) == 1.0 and get_lr(88, wsd) == 1.0
    assert get_lr(99, wsd) == pytest.approx(1.0 + (11 / 22) * (0.1 - 1.0))
    assert get_lr(110, wsd) == pytest.approx(0.1)
    # a decay fraction that would start inside the warmup: the rate reaches its peak, then decays from there
    short = _cfg(lr_schedule="wsd", wsd_decay_frac=0.2, warmup_iters=100)  # 88 < 100: decay over 100..110
    assert get_lr(99, short) == pytest.approx(100 / 101) and get_lr(100, short) == 1.0
    assert get_lr(105, short) == pytest.approx(1.0 + 0.5 * (0.1 - 1.0))
    lrs = [get_lr(i, short) for i in range(100, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    from gptlab.train.startup_report import _schedule

    assert _schedule(wsd).endswith("stable, then linear decay to 0.1 over iters 88..110 (the last 20% of 110)")
    assert "no stable phase, linear decay to 0.1 over iters 100..110" in _schedule(short)
    for schedule in ("wsd", "cosine"):  # a config file's decay that ends inside the warmup: min_lr after it
        ends = _cfg(lr_schedule=schedule, warmup_iters=100, lr_decay_iters=50)
        assert get_lr(100, ends) == 0.1 and _schedule(ends).endswith(
            "then 0.1 (lr_decay_iters=50 ends inside the warmup: no decay)"
        )
    assert get_lr(0, _cfg(decay_lr=False)) == 1.0 and get_lr(10**6, _cfg(decay_lr=False)) == 1.0
    assert all(math.isfinite(get_lr(i, _cfg(warmup_iters=0, lr_decay_iters=0))) for i in range(3))


def test_quickstart_config_file_matches_the_default_job() -> None:
    from gptlab.train.cli import QUICKSTART

    # all but overwrite, which `gptlab train` sets only for its own out_dir; the file, given another --out_dir,
    # would replace whatever run is there
    expected = {k: v for k, v in QUICKSTART.items() if k != "overwrite"}
    assert load_config_file(ROOT / "config/train_stdlib_char.py") == expected


@pytest.mark.parametrize(
    ("mode", "parallel", "scope"),
    [
        ("reduce-overhead", "none", "model"),
        ("max-autotune-no-cudagraphs", "fsdp", "model"),
        ("default", "ddp", "blocks"),
    ],
)
def test_compile_mode_reaches_torch_compile(
    mode: str, parallel: str, scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--compile_mode is torch.compile's ``mode`` (CUDA graphs with 'reduce-overhead'), for the whole
    model or, under FSDP2 or with compile_scope='blocks', for every block."""
    import torch

    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.parallel import DistInfo, parallelize

    seen: list[dict] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    monkeypatch.setattr("torch.distributed.fsdp.fully_shard", lambda module, **kw: module)
    monkeypatch.setattr("torch.distributed.device_mesh.init_device_mesh", lambda *args, **kw: None)  # no group here
    monkeypatch.setattr("torch.nn.parallel.DistributedDataParallel", lambda module, **kw: module)
    cfg = TrainConfig(compile=True, compile_mode=mode, parallel=parallel, device="cpu", compile_scope=scope)
    model = ConfigurableGPT(get_debug_config("llama", n_layer=2))
    info = DistInfo(mode=parallel)
    parallelize(model, cfg, info, "float32")
    assert seen == [{"mode": mode}] * (2 if parallel == "fsdp" or scope == "blocks" else 1)


@pytest.mark.parametrize(
    "raw",
    [
        b"# -*- coding: latin-1 -*-\n# caf\xe9\nn_layer = 3\n",
        b"\xef\xbb\xbf# caf\xc3\xa9\nn_layer = 3\n",
        b"# python train.py cfg.py --position_encoding=alibi\n# caf\xc3\xa9\nn_layer = 3\n",
        b"# position encoding: latin\n# caf\xc3\xa9\nn_layer = 3\n",  # UTF-8, whatever the comment suggests
    ],
)
def test_config_files_are_read_as_python_reads_them(raw: bytes, tmp_path: Path) -> None:
    """A coding line (latin-1) or a byte-order mark (Notepad's UTF-8): `python cfg.py` runs either; a comment
    that Python would take for a coding line naming no codec reads as UTF-8, as nanoGPT's exec(open().read())."""
    from gptlab.config.files import load_config_file

    path = tmp_path / "cfg.py"
    path.write_bytes(raw + b'prompt = "caf\xc3\xa9"\n' if b"latin-1" not in raw else raw + b'prompt = "caf\xe9"\n')
    values = load_config_file(str(path), keys=("prompt",))
    assert values["n_layer"] == 3 and values["prompt"] == "café"


def test_shipped_config_files_are_python_files() -> None:
    """`python config/X.py` must parse them too: a first-two-lines comment with `encoding=...` did not."""
    import importlib.util

    for path in (Path(__file__).resolve().parents[2] / "config").glob("*.py"):
        compile(importlib.util.decode_source(path.read_bytes()), str(path), "exec")


def test_a_constant_rate_below_the_default_min_lr_can_be_asked_for() -> None:
    """min_lr is unused by a constant schedule: comparing it with learning_rate refused --learning_rate=1e-5, and
    the --min_lr the message pointed to was refused as having no effect."""
    run = parse_run_args(["--lr_schedule='constant'", "--learning_rate=1e-5"])
    assert get_lr(5000, run.train) == 1e-5  # past the warmup
    refused = r"min_lr=0.001 is larger than learning_rate=0.0001: the schedule would rise to it; pass --min_lr=1e-05 "
    with pytest.raises(ConfigError, match=refused + r"\(a tenth, as nanoGPT's configs\) or --decay_lr=False$"):
        parse_run_args(["--learning_rate=1e-4", "--min_lr=1e-3"])


def test_a_tilde_in_a_path_setting_is_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--out_dir=~/runs/x` reaches gptlab unexpanded (no shell expands '~' after '='): training wrote into a
    folder named '~' in the working directory while `sample --out_dir=~/runs/x` read the home folder's."""
    from gptlab.errors import path_argument

    monkeypatch.setenv("HOME", str(tmp_path))
    run = parse_run_args(["--out_dir=~/runs/x", "--data_dir=~/data"])
    assert (run.train.out_dir, run.train.data_dir) == (str(tmp_path / "runs/x"), str(tmp_path / "data"))
    assert path_argument("~/report") == str(tmp_path / "report")  # gptlab prepare/export/report's paths
    from gptlab.errors import CheckpointError
    from gptlab.train.sample import parse_sample_args, sample

    (tmp_path / "prompt.txt").write_text("def ")  # read before the model is looked for: there is none
    with pytest.raises(CheckpointError, match="no checkpoint"):
        sample(parse_sample_args(["--start=FILE:~/prompt.txt", f"--out_dir={str(tmp_path / 'none')!r}"]))


def test_a_resume_reads_out_dir_as_training_will(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A config file's `out_dir = os.environ.get('RUN_DIR')` unset: a resume's checkpoint lookup met None first
    (a TypeError traceback, where a new run says it in one line); '~' is the home folder there too."""
    (tmp_path / "env.py").write_text("import os\nout_dir = os.environ.get('RUN_DIR_UNSET_HERE')\n")
    with pytest.raises(ConfigError, match=r"out_dir=None is invalid: expected a non-empty path"):
        parse_run_args([str(tmp_path / "env.py"), "--init_from='resume'"])
    from gptlab.errors import CheckpointError

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"out_dir='{tmp_path / 'nothing'}' does not exist"):
        parse_run_args(["--init_from='resume'", "--out_dir=~/nothing"])


def test_a_typed_max_iters_that_cuts_a_files_schedule_is_said(tmp_path: Path) -> None:
    """config/arch_team.py (nanoGPT's train_gpt2.py schedule: 2000 warmup, decay to 600000) with --max_iters=2000
    trained 2000 iterations of warmup and never decayed, without a word; the note names the key that fixes it.
    A schedule typed whole, a file's own, or a constant rate is the user's: nothing said."""
    from gptlab.train.schedule import schedule_cut

    cfg = tmp_path / "long.py"
    cfg.write_text("max_iters = 600000\nlr_decay_iters = 600000\nwarmup_iters = 2000\n")

    def said(*args: str) -> str | None:
        run = parse_run_args([str(cfg), *args])
        return schedule_cut(run.train, run.typed)

    assert said("--max_iters=1000") == (
        "max_iters=1000 ends inside the warmup (warmup_iters=2000): the learning rate reaches 0.0003, not "
        "learning_rate=0.0006; set --warmup_iters for this run's length"
    )
    assert said("--max_iters=20000") == (
        "max_iters=20000 stops the cosine decay 3% of the way to lr_decay_iters=600000: the learning rate ends at "
        "0.000599, not min_lr=6e-05; add --lr_decay_iters=20000 to decay over the run (nanoGPT's configs set the two "
        "equal)"
    )
    for args in (
        ["--max_iters=20000", "--lr_decay_iters=20000"],  # both typed: the README's CPU line
        ["--max_iters=1000", "--warmup_iters=1000", "--lr_decay_iters=600000"],  # meant
        [],  # the file's own schedule
        ["--max_iters=1000", "--decay_lr=False"],  # no schedule
        ["--max_iters=20000", "--lr_schedule='constant'"],  # nothing decays
        ["--max_iters=1000", "--eval_only=True"],  # an evaluation takes no step
    ):
        assert said(*args) is None, args
    # a run as long as its warmup reaches learning_rate at its last step: only the decay's cut is said
    assert said("--max_iters=2000").startswith("max_iters=2000 stops the cosine decay 0% of the way")


def test_a_constant_rate_holds_past_lr_decay_iters() -> None:
    """``constant`` is learning_rate after the warmup for the whole run, however long: lr_decay_iters (110 here, a
    default the schedule does not use) must not drop it to min_lr."""
    constant = _cfg(lr_schedule="constant")
    assert [get_lr(i, constant) for i in (10, 109, 110, 111, 10**6)] == [1.0] * 5


def test_a_config_files_own_short_run_is_not_said_to_cut_its_schedule(tmp_path: Path) -> None:
    """A file that sets max_iters=1000 below its lr_decay_iters=600000 chose that itself: only a typed
    --max_iters (the README's CPU line on a long file) is said to cut the decay."""
    from gptlab.train.schedule import schedule_cut

    cfg = tmp_path / "own.py"
    cfg.write_text("max_iters = 1000\nlr_decay_iters = 600000\nwarmup_iters = 100\n")
    run = parse_run_args([str(cfg)])
    assert schedule_cut(run.train, run.typed) is None
    typed = parse_run_args([str(cfg), "--max_iters=1000"])
    assert (schedule_cut(typed.train, typed.typed) or "").startswith("max_iters=1000 stops the cosine decay")


def test_the_moved_functions_stay_importable_from_gptlab_config_train() -> None:
    """Scripts written before config files and run resolution had modules of their own import them from
    gptlab.config.train; the same objects, and a mistyped name is still an AttributeError."""
    import gptlab.config.train as old
    from gptlab.config import files, resolve

    assert old.parse_run_args is resolve.parse_run_args and old.resolve_run_config is resolve.resolve_run_config
    assert old.load_config_file is files.load_config_file and old.LAUNCH_KEYS is resolve.LAUNCH_KEYS
    with pytest.raises(AttributeError, match="parse_run_arg"):
        old.parse_run_arg  # noqa: B018
    assert {"parse_run_args", "load_config_file", "TrainConfig"} <= set(dir(old))  # an IDE's or help()'s list
