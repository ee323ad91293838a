"""gptlab.fileio: a file is replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptlab.fileio import atomic_open, atomic_write


def test_atomic_write_replaces_whole_and_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "summary.json"
    atomic_write(path, "first é\n")  # text as UTF-8, parents made
    assert path.read_bytes() == "first é\n".encode()
    with pytest.raises(RuntimeError, match="disk gone"), atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk gone")
    assert path.read_text() == "first é\n"  # the old file, untouched
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary left behind
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second"


def test_a_refused_open_names_the_file_written_not_its_hidden_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder the user may not write (mode 555): the error named '.summary.json.tmp-PID', a file they never see."""
    import builtins

    real_open = builtins.open

    def refuse(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "x" in mode:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(PermissionError) as refused:
        atomic_write(tmp_path / "summary.json", "{}")
    assert refused.value.filename == str(tmp_path / "summary.json")
    monkeypatch.undo()
    (tmp_path / "summary.json").mkdir()  # a rename refused: its error names both files, left as they are
    (tmp_path / "summary.json" / "x").write_text("")
    with pytest.raises(OSError) as renamed:
        atomic_write(tmp_path / "summary.json", "{}")
    assert ".summary.json.tmp-" in str(renamed.value.filename) and renamed.value.filename2 == str(
        tmp_path / "summary.json"
    )


def test_check_directory_names_the_key_and_takes_the_path_as_written(tmp_path: Path) -> None:
    from gptlab.errors import ConfigError
    from gptlab.fileio import check_directory

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^out_dir='.*file' is a file: expected a directory"):
        check_directory("out_dir", tmp_path / "file")
    with pytest.raises(ConfigError, match=r"^data_dir='.*file/a/b' cannot be created: '.*file' is a file$"):
        check_directory("data_dir", tmp_path / "file" / "a" / "b")
    check_directory("out_dir", tmp_path / "new" / "run")  # to be created: fine
    check_directory("out_dir", "~nosuchuser/out")  # a folder named '~nosuchuser' here, as the run will make it


def test_check_directory_names_the_key_where_it_cannot_create_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder under one the user cannot write to: "[Errno 13] Permission denied: PATH" named no key (tests run
    as root, who may write anywhere: the permission is what os.access answers)."""
    import os

    from gptlab.errors import ConfigError
    from gptlab.fileio import check_directory

    (tmp_path / "shared").mkdir()
    denied = {str(tmp_path / "shared")}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) not in denied and real_access(p, mode, **kw))
    with pytest.raises(ConfigError, match=r"^out_dir='.*shared/a/run' cannot be created: permission denied in '.*"
                                          r"shared' \(pick a folder you can write to\)$"):  # fmt: skip
        check_directory("out_dir", tmp_path / "shared" / "a" / "run", creates=True)
    check_directory("data_dir", tmp_path / "shared" / "a" / "run")  # read only (a dataset looked for): not refused
    check_directory("out_dir", tmp_path / "shared", creates=True)  # there already: reading a run there is fine
    check_directory("out_dir", tmp_path / "mine" / "run", creates=True)


def test_an_atomic_write_is_durable_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss after the rename must find the new bytes under the name: the file is fsynced before it
    replaces the old one, and its folder after (the rename itself); without them a checkpoint or meta.json could
    be empty under its real name."""
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("folder" if stat.S_ISDIR(mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "meta.json", "{}")
    assert synced == ["file", "folder"] and (tmp_path / "meta.json").read_text() == "{}"
