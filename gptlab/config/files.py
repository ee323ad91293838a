"""Config files: nanoGPT-style Python files the user names, run with the training defaults (and earlier
files' keys) readable, their assignments collected as a run's keys."""

from __future__ import annotations

import ast
import builtins
import copy
import importlib.util
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gptlab.config.model import ARCH_FIELDS
from gptlab.config.train import ALL_KEYS, TRAIN_FIELDS, TrainConfig
from gptlab.errors import ConfigError, did_you_mean
from gptlab.model.registry import Registry
from gptlab.plugins import anchor_plugins, importable_from, merge_plugins, split_plugins


def names_a_file(name: str) -> bool:
    """Whether a command's PRESET argument names a config file rather than a preset (presets have no
    dot or slash): ``x.yaml`` then gets the config-file error, not "arch_preset='x.yaml' is not one of"."""
    return name.endswith(".py") or "/" in name or "." in Path(name).name


def _check_config_statements(tree: ast.Module, source: str, path: Path) -> None:
    """A statement that sets nothing where a setting was surely meant is an error, not a no-op: YAML's
    ``n_layer: 12`` is a Python annotation, a JSON object a bare expression."""
    for node in tree.body:
        line = (ast.get_source_segment(source, node) or "").splitlines()[0]
        if isinstance(node, ast.AnnAssign) and node.value is None:
            target = ast.unparse(node.target)
            raise ConfigError(
                f"config file {str(path)!r}, line {node.lineno}: `{line}` sets nothing (an annotation): "
                f"write {target} = {ast.unparse(node.annotation)}"
            )
        text = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if isinstance(node, ast.Expr) and not text and not isinstance(node.value, ast.Call):  # a docstring, a print
            raise ConfigError(
                f"config file {str(path)!r}, line {node.lineno}: `{line}` is an expression that sets nothing: "
                "write key = value"
            )


def _config_source(raw: bytes) -> str:
    """A config file's text: UTF-8 (a byte-order mark dropped), as nanoGPT's exec(open(f).read()) reads it,
    whatever a first-line comment such as `# position encoding: latin` looks like to Python; bytes that are
    not UTF-8 as Python decodes a source file (its coding line, e.g. latin-1)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return importlib.util.decode_source(raw)


class _FileNamespace(dict):
    """A config file's names, as its module-level code reads and writes them (exec's locals): a name the file
    did not set reads the run's value so far (``visible``: the training defaults and earlier files' keys), as
    nanoGPT's configurator runs its files in train.py's globals (``lr_decay_iters = max_iters``). What the file
    sets is written through to ``globals`` (which start as ``visible``) too, so that its own functions see it;
    only what it sets is collected."""

    def __init__(self, globals_: dict[str, Any], visible: dict[str, Any]) -> None:
        super().__init__()
        # a key named as a builtin (compile) keeps the builtin, as a file that calls compile() expects
        self._visible = {k: v for k, v in visible.items() if not hasattr(builtins, k)}
        self._globals, self.read = globals_, set[str]()
        globals_.update(copy.deepcopy(self._visible))  # what the file's functions read of them

    def __missing__(self, key: str) -> Any:
        if key in self._visible:
            self.read.add(key)
            return copy.deepcopy(self._visible[key])  # an earlier file's list stays as that file left it
        raise KeyError(key)  # then exec's globals, then builtins (a NameError names it)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._globals[key] = value

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._globals.pop(key, None)

    def take_global_writes(self) -> None:
        """Collect what the file set through ``globals()`` (``globals().update(batch_size=9)``, which sets
        train.py's globals in nanoGPT) as its assignments: it went to ``globals`` alone, silently dropped."""
        for key, value in self._globals.items():
            if key.startswith("_") or dict.__contains__(self, key):
                continue
            try:
                unchanged = key in self._visible and bool(value == self._visible[key])
            except Exception:  # (a value that does not compare to a bool: changed)
                unchanged = False
            if not unchanged:
                super().__setitem__(key, value)


def training_defaults() -> dict[str, Any]:
    """Every training key's default, as a config file may read it (nanoGPT's train.py globals)."""
    defaults = TrainConfig()
    return {name: getattr(defaults, name) for name in TRAIN_FIELDS}


def load_config_file(
    path: str | Path, keys: Iterable[str] = (), visible: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run a nanoGPT-style Python config file the user named and collect its assignments: training
    and architecture keys, and ``keys`` (another command's own). The file may read what it does not set:
    ``visible`` (the values so far: earlier files' over the defaults), by default the training defaults."""
    known = sorted({*ALL_KEYS, *keys})
    path = Path(path)
    if not path.is_file():
        if "=" in str(path):
            hint = f" (did you mean --{str(path).lstrip('-')}?)"
        elif path.name and path.suffix != ".py" and path.with_name(path.name + ".py").is_file():
            hint = f" (did you mean {str(path) + '.py'!r}?)"
        elif str(path).lstrip("-").replace(".", "", 1).isdigit():
            hint = " (overrides take the form --key=value, with '=')"
        elif not path.exists() and not path.is_absolute() and (Path("config") / path).is_file():
            hint = f" (did you mean {str(Path('config') / path)!r}?)"  # nanoGPT's: config/train_shakespeare_char.py
        elif not path.exists() and path.parent.is_dir():  # a misspelt file name: the nearest in its folder
            hint = did_you_mean(path.name, sorted(p.name for p in path.parent.glob("*.py")))
        elif not path.exists() and path.parent.name == "config":
            hint = (
                f" in {Path.cwd()} (the example config files are the gptlab repository's config/ folder, "
                "not installed with the package: run from a clone's root or give their path)"
            )
        else:
            hint = ""
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {what}{hint}")
    if path.suffix != ".py":
        raise ConfigError(
            f"config file {str(path)!r} is not a .py file: config files are Python, as nanoGPT's "
            "(n_layer = 12); YAML or JSON is not read"
        )
    file_globals: dict[str, Any] = {}
    namespace = _FileNamespace(file_globals, training_defaults() if visible is None else visible)
    before = _registered()
    try:
        source = _config_source(path.read_bytes())
        tree = ast.parse(source, str(path))
        _check_config_statements(tree, source, path)
        with importable_from(path.parent, Path.cwd()):  # `import my_components` beside it, under any launcher
            exec(compile(tree, str(path), "exec"), file_globals, namespace)  # the user's own file, as in nanoGPT
        _check_own_modules_imported(tree, path)
        namespace.take_global_writes()
    except ConfigError:
        raise
    except Exception as e:
        # where in the user's file (a SyntaxError names its line itself): the deepest frame in that file
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f", line {lines[-1]}" if lines and not isinstance(e, SyntaxError) else ""
        hint = ""
        if isinstance(e, NameError) and getattr(e, "name", None) in ARCH_FIELDS:
            hint = (
                f" (a config file reads the training defaults and what earlier files set; {e.name} has no value "
                "before the preset is built: set it first)"
            )
        raise ConfigError(f"config file {str(path)!r}{where} failed: {type(e).__name__}: {e}{hint}") from None
    values = {k: v for k, v in namespace.items() if not k.startswith("_") and not callable(v)}
    values = {k: v for k, v in values.items() if not hasattr(v, "__spec__")}  # imported modules
    values = {k: v for k, v in values.items() if not isinstance(v, Registry)}  # imported to register a component
    imported = _imported_names(tree, namespace)  # `from math import pi`: a global of the file, as in nanoGPT's
    values = {k: v for k, v in values.items() if k in known or k not in imported}  # (a key imported sets it)
    for key in values:
        if key not in known:
            raise ConfigError(
                f"config file {str(path)!r}: unknown key {key!r}{did_you_mean(key, known)}; a variable of the "
                "file's own (a helper) is named with a leading underscore"
            )
    if isinstance(values.get("plugins"), str):  # found from the file's folder (imported where the run is resolved)
        values["plugins"] = anchor_plugins(values["plugins"], path.parent)
    if _registered() != before and namespace.read:  # imported again as a plugin (resume, sample): alone, there
        raise ConfigError(
            f"config file {str(path)!r} registers components, so it is imported again as a plugin where the run "
            f"is read back (resume, sample), with no other file's keys: it may not read {sorted(namespace.read)} "
            "that it does not set (set them in it, or register in a module of its own named by --plugins)"
        )
    if _registered() != before and isinstance(values.get("plugins", ""), str):
        # the file registers components: it is its own plugin, so the run records it and the hint names it
        values["plugins"] = merge_plugins(values.get("plugins"), str(path.resolve()))
    return values


def _imported_names(tree: ast.Module, namespace: Mapping[str, Any]) -> set[str]:
    """The names the file's top-level import statements bind (``from math import pi``; a ``*`` import's, read
    from its module) and no top-level statement assigns: values, not settings, unless they are keys. Inside a
    function or class an import binds no global (``def _f(): import wandb`` leaves ``wandb = True`` a typo); an
    ``except`` clause's assignment is an optional import's fallback (``except ImportError: yaml = None``)."""
    imported: set[str] = set()
    assigned: set[str] = set()
    nodes: list[tuple[ast.AST, bool]] = [(node, False) for node in tree.body]  # (node, inside an except clause)
    while nodes:
        node, fallback = nodes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if not isinstance(node, ast.Lambda) and not fallback:
                assigned.add(node.name)
            continue  # (its body's names are its own)
        if isinstance(node, ast.Import):
            imported.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    imported.add(alias.asname or alias.name)
                elif node.level == 0 and (module := sys.modules.get(node.module or "")) is not None:
                    imported.update(k for k, v in vars(module).items() if namespace.get(k, object()) is v)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and not fallback:
            assigned.add(node.id)
        fallback = fallback or isinstance(node, ast.ExceptHandler)
        nodes.extend((child, fallback) for child in ast.iter_child_nodes(node))
    return imported - assigned


def _check_own_modules_imported(tree: ast.Module, path: Path) -> None:
    """A module beside the config file that its ``import`` found already loaded from another config file's folder
    (in one ``compare`` or ``load_config_file`` after another): Python hands back the first, so its components,
    not this folder's, were registered, silently. A copy of the same code is fine, and so is a module Python takes
    from its own path (the standard library's ``random`` beside a ``random.py``, an installed package)."""
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in imports if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in imports if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    on_path = {Path(p or ".").resolve() for p in sys.path}
    for name in sorted(names):
        own = next((p for p in (path.parent / f"{name}.py", path.parent / name / "__init__.py") if p.is_file()), None)
        loaded = getattr(sys.modules.get(name), "__file__", None)
        if own is None or not isinstance(loaded, str) or Path(loaded).resolve() == own.resolve():
            continue
        found = Path(loaded).resolve()
        root = found.parent.parent if found.name == "__init__.py" else found.parent
        if root in on_path or _same_bytes(found, own):
            continue
        raise ConfigError(
            f"config file {str(path)!r} imports {name!r}, which this process loaded before from {loaded!r}, not "
            f"from {str(own)!r} beside the file (Python keeps one module of a name): give the modules names of "
            "their own"
        )


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _registered() -> dict[str, dict[str, int]]:
    """Every registry's names and the ids of what they name: a config file that changes them registers."""
    from gptlab.model import attention, components  # noqa: F401  (the built-ins first)
    from gptlab.model.registry import ALL_REGISTRIES

    return {reg.kind: {name: id(c) for name, c in reg.items()} for reg in ALL_REGISTRIES}


def registering_file(path: str | Path, from_file: dict[str, Any]) -> str | None:
    """The entry load_config_file adds to a config file's ``plugins`` when the file registers components
    (it is its own plugin), else None."""
    itself = str(Path(path).resolve())
    plugins = from_file.get("plugins")
    return itself if isinstance(plugins, str) and itself in split_plugins(plugins) else None
