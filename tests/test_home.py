"""Where the store is when ``NBFLOW_HOME`` is not set: one rule for kernels and the CLI alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbflow import settings
from nbflow.settings import find_home


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root (pyproject.toml) with a notebooks/ directory, under a home directory of its own, so
    the walk never reaches a store outside the test (it stops below the user's home)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NBFLOW_HOME")
    root = tmp_path / "project"
    (root / "notebooks" / "deep").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_a_new_store_goes_to_the_project_root_seen_from_any_directory_below(project: Path) -> None:
    assert find_home(project) == project / ".nbflow"
    assert find_home(project / "notebooks") == project / ".nbflow"
    assert find_home(project / "notebooks" / "deep") == project / ".nbflow"


def test_git_marks_a_root_too_and_the_nearest_root_wins(project: Path) -> None:
    inner = project / "notebooks" / "deep"
    (inner / ".git").mkdir()
    assert find_home(inner) == inner / ".nbflow"
    assert find_home(project / "notebooks") == project / ".nbflow"


def test_an_existing_store_is_found_first(project: Path) -> None:
    (project / "notebooks" / ".nbflow").mkdir()
    assert find_home(project / "notebooks") == project / "notebooks" / ".nbflow"
    assert find_home(project / "notebooks" / "deep") == project / "notebooks" / ".nbflow"
    assert find_home(project) == project / ".nbflow"  # from the root, the root's


def test_a_store_above_a_project_is_not_the_projects(project: Path) -> None:
    (project.parent / ".nbflow").mkdir()  # left in the directory that holds projects
    assert find_home(project / "notebooks") == project / ".nbflow"
    inner = project / "notebooks" / "deep"
    (inner / "pyproject.toml").write_text("")  # a project inside the project: its own store
    (project / ".nbflow").mkdir()
    assert find_home(inner) == inner / ".nbflow"


def test_without_a_store_or_a_project_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    loose = tmp_path / "a" / "b"
    loose.mkdir(parents=True)
    assert find_home(loose) == loose / ".nbflow"


def test_the_walk_stops_below_the_users_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".nbflow").mkdir()
    (tmp_path / ".git").mkdir()  # a dotfiles repository
    below = tmp_path / "scratch"
    below.mkdir()
    assert find_home(below) == below / ".nbflow"
    assert find_home(tmp_path) == tmp_path / ".nbflow"  # the home directory itself, when it is the start


def test_settings_use_the_rule_from_the_current_directory_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "notebooks")  # a kernel's directory is its notebook's
    settings.reset()
    assert settings.get_settings().home == project / ".nbflow"
    monkeypatch.chdir(project / "notebooks" / "deep")
    (project / "notebooks" / "deep" / ".nbflow").mkdir()
    assert settings.get_settings().home == project / ".nbflow"  # resolved once: a later chdir moves nothing
    monkeypatch.setenv("NBFLOW_HOME", "elsewhere")
    settings.reset()
    assert settings.get_settings().home == project / "notebooks" / "deep" / "elsewhere"  # NBFLOW_HOME wins


def test_every_cli_command_uses_the_rule_and_prints_the_store_first(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbflow.cli import main

    monkeypatch.chdir(project)
    for command in (["runs"], ["cache", "info"], ["cache", "ls"], ["cache", "prune"], ["cache", "clear"],
                    ["runs", "prune", "--older-than", "1d"]):
        assert main(command) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert first == f"store {project / '.nbflow'}", (command, first)
    monkeypatch.chdir(project / "notebooks")
    assert main(["runs", "--json"]) == 0
    assert '"home": "' + str(project / ".nbflow") in capsys.readouterr().out


def test_the_walk_stops_at_a_directory_others_may_write_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``.nbflow`` (or a project marker) in a shared directory like /tmp is somebody else's to plant: this
    user's results, locks and limits never go there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NBFLOW_HOME")
    shared = tmp_path / "shared"
    work = shared / "alice" / "work"
    work.mkdir(parents=True)
    (shared / ".nbflow").mkdir()
    (shared / "pyproject.toml").write_text("")
    shared.chmod(0o777)
    try:
        assert find_home(work) == work / ".nbflow"
        assert find_home(shared) == shared / ".nbflow"  # the current directory itself is the user's choice
    finally:
        shared.chmod(0o755)
