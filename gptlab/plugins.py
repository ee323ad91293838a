"""Components registered outside gptlab: the modules or files to import before a config is read.

A registered norm, FFN, position encoding, activation or attention backend lives in the user's
code. ``train.py`` runs a config file that registers one, but a command that reads a run directory
or a checkpoint (``gptlab export``, ``sample``, ``arch``/``flops``/``plan``, a resume with
``--plugins``) must import that code again: ``--plugins=my_components`` (a module, found as
``python -m`` finds one: the current directory first) or ``--plugins=path/to/file.py`` (a module or
a config file that registers), several separated by commas. gptlab never imports code a run or a
checkpoint names by itself: a run records its ``plugins`` only to say what to pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import itertools
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_imported_files: dict[Path, str] = {}  # a file imported twice in one process runs once
_module_numbers = itertools.count()  # each file's module name its own (a failed import's record is removed)
_imported_entries: dict[str, None] = {}  # every entry imported, in order (ordered, each once)


def split_plugins(spec: str) -> list[str]:
    """``"a, b.py"`` -> ``["a", "b.py"]``; each entry checked to be a module name or a .py file's path."""
    entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
    for entry in entries:
        if not entry.endswith(".py") and not _MODULE_NAME.fullmatch(entry):
            raise ConfigError(
                f"plugins={spec!r}: {entry!r} is neither a module name (my_components, pkg.components) nor a .py file"
            )
    return entries


@contextlib.contextmanager
def importable_from(*folders: str | Path) -> Iterator[None]:
    """Put ``folders`` first on ``sys.path`` while the block runs (a config file's own folder and the
    current directory, so that ``import my_components`` beside it works under any launcher)."""
    added = [str(Path(folder).resolve()) for folder in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def import_plugins(spec: str) -> list[str]:
    """Import each entry of ``spec`` (see the module docstring); returns the module names. A failure is
    one ConfigError naming the entry."""
    names = []
    for entry in split_plugins(spec):
        try:
            names.append(_import_file(Path(entry)) if entry.endswith(".py") else _import_module(entry))
            _imported_entries[entry] = None
        except ConfigError:
            raise
        except SystemExit as e:  # a script's argparse or exit(): a plugin is imported, never run as a script
            raise ConfigError(
                f"plugins: importing {entry!r} exited (SystemExit({e.code!r})): a plugin module is imported, so its "
                "top level must only define and register (put a script's code under `if __name__ == '__main__':`)"
            ) from None
        except Exception as e:  # the plugin's own code failed: say which, in one line
            raise ConfigError(f"plugins: importing {entry!r} failed: {type(e).__name__}: {e}") from None
    return names


def anchor_plugins(spec: str, folder: Path) -> str:
    """A config file's ``plugins``, found from the file's folder first: a relative ``.py`` path, or a
    module name, that names a file beside it becomes that file's absolute path (recorded so, it is
    found again from anywhere); other entries are kept as written (the current directory, PYTHONPATH)."""
    entries = []
    for entry in split_plugins(spec):
        if entry.endswith(".py"):
            beside = folder / entry
            relative = not Path(entry).expanduser().is_absolute()
            entries.append(str(beside.resolve()) if relative and beside.is_file() else entry)
        else:
            beside = folder / f"{entry}.py"  # a plain module name (a dotted one is a package's: left to the path)
            entries.append(str(beside.resolve()) if "." not in entry and beside.is_file() else entry)
    return ", ".join(entries)


def merge_plugins(*specs: object) -> str:
    """Several ``plugins`` values as one, each entry once, in order: they add up (a config file that
    registers is its own plugin, which a later ``--plugins`` or a second file must not drop)."""
    entries: dict[str, None] = {}  # (ordered, each once)
    for spec in specs:
        if isinstance(spec, str):
            entries.update(dict.fromkeys(split_plugins(spec)))
    return ", ".join(entries)


def _import_module(name: str) -> str:
    try:
        with importable_from(Path.cwd()):
            module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name and not name.startswith(f"{e.name}."):
            raise  # the plugin imports something missing: its own error
        raise ConfigError(
            f"plugins: no module named {name!r} in {Path.cwd()} or on the Python path "
            "(give a .py file's path, or set PYTHONPATH)"
        ) from None
    if getattr(module, "__file__", None) is None and hasattr(module, "__path__"):  # a folder without __init__.py
        folders = ", ".join(map(str, module.__path__))  # (a run's out_dir of that name) imports, registering nothing
        raise ConfigError(f"plugins: {name!r} is a folder ({folders}), no module: give the .py file that registers")
    return name


def _import_file(path: Path) -> str:
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"plugins: {str(path)!r} is not a file")
    if resolved in _imported_files:
        return _imported_files[resolved]
    stem = re.sub(r"\W", "_", resolved.stem)
    name = f"gptlab_plugin_{stem}_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined there pickle and resolve like any module's
    try:
        with importable_from(resolved.parent, Path.cwd()):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _imported_files[resolved] = name  # (before its plugins key's imports: a file naming itself, a cycle, ends)
    if isinstance(nested := getattr(module, "plugins", None), str) and nested.strip():
        # a config file's plugins key: its components come with it ("the config file itself will do")
        try:
            import_plugins(anchor_plugins(nested, resolved.parent))
        except ConfigError as e:
            del _imported_files[resolved]  # imported again next time, its plugins key followed again
            raise ConfigError(f"{e} (named by plugins={nested!r} in {str(resolved)!r})") from None
    return name


def plugin_digests(spec: str, config: Any = None) -> dict[str, str]:
    """Each entry of ``spec`` that is a file (a ``.py`` path, or a module's source) -> the sha256 of its bytes (16
    hex digits): a checkpoint records them, so that its resume can say a component's code changed since. With
    ``config`` (an architecture), also each file that defines one of its registered components and no entry
    names, by its path: a module a config file imports (``import my_components``) is no entry of its own."""
    digests, covered = {}, set()
    for entry in split_plugins(spec):
        try:
            if entry.endswith(".py"):
                path: Path | None = Path(entry).expanduser().resolve()
            else:
                module = sys.modules.get(entry)
                origin = getattr(module, "__file__", None)
                path = Path(origin).resolve() if origin else None
            if path is not None and path.is_file():
                digests[entry] = _digest(path)
                covered.add(path)
        except OSError:  # unreadable now: nothing to compare
            continue
    for path in component_files(config) if config is not None else []:
        if path not in covered:
            with contextlib.suppress(OSError):
                digests[str(path)] = _digest(path)
    return digests


def _digest(path: Path) -> str:
    return hashlib.sha256(_code_of(path.read_bytes())).hexdigest()[:16]


def component_files(config: Any) -> list[Path]:
    """The module files of ``config``'s registered components: not gptlab's or torch's own, nor the running
    script's (``__main__``: a resume from a script edits the script's call, not the component; said as
    ``plugins_unrecorded`` instead)."""
    from gptlab.model.registry import ALL_REGISTRIES

    files = []
    for registry in ALL_REGISTRIES:
        component = registry.get(getattr(config, registry.kind, None))
        if component is None:
            continue
        target = getattr(component, "func", component)  # a functools.partial's function
        module_name = getattr(target, "__module__", None) or type(target).__module__
        if module_name == "__main__" or str(module_name).split(".")[0] in ("gptlab", "torch"):
            continue
        file = getattr(sys.modules.get(module_name), "__file__", None)
        if isinstance(file, str) and file.endswith(".py") and Path(file).is_file():
            files.append(Path(file).resolve())
    return list(dict.fromkeys(files))


def edited_plugins(saved: object, digests: dict[str, str]) -> list[str]:
    """The plugin files of ``digests`` (``plugin_digests``) whose code differs from the digests a checkpoint
    recorded (``saved``): a registered component's code changed under its weights."""
    if not isinstance(saved, dict):
        return []
    return sorted(k for k, v in digests.items() if saved.get(k) not in (None, v))


def edited_plugins_note(saved: object, digests: dict[str, str]) -> str:
    """The end of a weights-do-not-fit error where a plugin file changed since the checkpoint ('' if none)."""
    edited = edited_plugins(saved, digests)
    return f"; plugin code changed since this checkpoint was saved: {', '.join(edited)}" if edited else ""


def _code_of(source: bytes) -> bytes:
    """A plugin file's code without its settings: a config file that registers is a plugin, and a resume that
    raised its max_iters there changed no component (its syntax tree, less top-level assignments of gptlab's
    keys, comments and layout; the bytes where it does not parse)."""
    import ast

    from gptlab.config.train import ALL_KEYS

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source

    settings = set(ALL_KEYS)

    def a_setting(node: ast.stmt) -> bool:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        return isinstance(node, (ast.Assign, ast.AnnAssign)) and len(names) == len(targets) and set(names) <= settings

    tree.body = [node for node in tree.body if not a_setting(node)]
    return ast.dump(tree).encode()


PLUGINS_HELP = (
    "modules or .py files that register components of your own (comma-separated), imported first: "
    "a run's or config file's own norm, FFN, position encoding, activation or attention backend"
)


def component_plugins(arch: Any) -> tuple[str, list[str]]:
    """What imports the registered components ``arch`` uses, as a ``plugins`` value (a top-level module's
    file by its absolute path, as a command line's is recorded; a package's module by its name), for a run
    started from Python with none given (it recorded none: a later ``gptlab sample`` could not name them);
    and the components that no later process can import (defined in the running script, ``__main__``)."""
    from gptlab.model.registry import (
        ACTIVATION_REGISTRY,
        ATTENTION_BACKEND_REGISTRY,
        FFN_REGISTRY,
        NORM_REGISTRY,
        POSITION_ENCODING_REGISTRY,
        is_builtin,
    )

    uses = [
        (NORM_REGISTRY, arch.normalization),
        (POSITION_ENCODING_REGISTRY, arch.position_encoding),
        (FFN_REGISTRY, arch.ffn_type),
        (ATTENTION_BACKEND_REGISTRY, arch.attention_backend),
    ]
    if "activation" not in arch.unused_keys():  # a fixed gate's (SwiGLU's) is not used
        uses.append((ACTIVATION_REGISTRY, arch.activation))
    entries: list[str] = []
    unimportable: list[str] = []
    for registry, name in uses:
        component = registry.get(name)
        if component is None or is_builtin(component):
            continue
        target = getattr(component, "func", component)  # a functools.partial's function
        module_name = getattr(target, "__module__", None) or type(target).__module__
        module = sys.modules.get(module_name)
        file = getattr(module, "__file__", None)
        if module_name == "__main__" or module is None:
            unimportable.append(f"{registry.kind}={name!r}")
        elif module_name.split(".")[0] == "torch":
            continue  # a partial of a torch function: torch imports itself
        elif "." not in module_name and isinstance(file, str) and file.endswith(".py") and "," not in file:
            entries.append(str(Path(file).resolve()))
        elif "," not in module_name:  # (an extension module, a package's module: by name)
            entries.append(module_name)
    return ", ".join(dict.fromkeys(entries)), unimportable


def add_plugins_option(parser: Any) -> None:
    """``--plugins`` on a command that reads an architecture; ``gptlab.cli.main`` imports them."""
    parser.add_argument("--plugins", default="", help=PLUGINS_HELP)


def saved_plugins(saved: dict) -> object:
    """The ``plugins`` a checkpoint (its ``config``) or a run's config.json recorded, if any."""
    config = saved.get("config", saved) if isinstance(saved, dict) else {}
    train = config.get("train") if isinstance(config, dict) else None
    return train.get("plugins") if isinstance(train, dict) else None


def imported_plugins() -> list[str]:
    """The plugins entries this process has imported, in order (named in an unknown component's error)."""
    return list(_imported_entries)


def _was_imported(entry: str) -> bool:
    if entry.endswith(".py"):
        return Path(entry).expanduser().resolve() in _imported_files
    return entry in sys.modules


def plugins_hint(recorded: object) -> str:
    """The end of an error about an unknown component of a saved run: what to pass to get it back (or, where
    that is imported already, that it no longer registers the name)."""
    if isinstance(recorded, str) and recorded.strip():
        hint = f"; this run was trained with plugins={recorded!r}: pass --plugins={shlex.quote(recorded)}"
        if all(_was_imported(entry) for entry in split_plugins(recorded)):  # passed already, most likely
            hint += " (imported in this process, it registers no such name now: renamed or removed since?)"
        return hint
    return (
        "; a component registered outside gptlab must be imported again to load it: pass the module or file "
        "that registers it (--plugins=my_components or --plugins=path/to/file.py, e.g. the config file)"
    )


__all__ = [
    "add_plugins_option",
    "anchor_plugins",
    "component_plugins",
    "edited_plugins",
    "edited_plugins_note",
    "import_plugins",
    "importable_from",
    "imported_plugins",
    "plugins_hint",
    "saved_plugins",
    "split_plugins",
]
