"""publish --force replaces only an earlier publish: a parent of the run, the run, a folder with
other files or a folder botnet did not publish is refused in one line (exit 2) and left byte for byte."""
import json
import shutil

import pytest

from botnet.cli import main
from botnet.io import dirswap
from helpers import abandoned_temp, assert_one_line_error, run, tree


@pytest.fixture()
def runs(demo_run, tmp_path):
    """runs/a (the demo run), a sibling run runs/b and an unrelated file: the issue's layout."""
    root = tmp_path / "runs"
    shutil.copytree(demo_run, root / "a")
    (root / "b").mkdir()
    (root / "b" / "last.safetensors").write_bytes(b"a sibling run's weights")
    (root / "notes.txt").write_text("my notes\n")
    return root


@pytest.fixture(scope="module")
def earlier(demo_run, tmp_path_factory):
    """A folder written by botnet publish."""
    out = tmp_path_factory.mktemp("earlier") / "pub"
    assert main(["publish", str(demo_run), str(out), "--no-eval"]) == 0
    return out


def test_force_on_the_parent_of_the_run_deletes_nothing(runs, capsys):
    before = tree(runs.parent)
    rc, _, err = run(capsys, ["publish", runs / "a", runs, "--force", "--no-eval"])
    assert_one_line_error(rc, err, f"OUT_DIR {runs} ", "holds the run directory")
    assert tree(runs.parent) == before


def test_force_on_the_run_itself_deletes_nothing(runs, capsys):
    before = tree(runs.parent)
    rc, _, err = run(capsys, ["publish", runs / "a", runs / "a", "--force", "--no-eval"])
    assert_one_line_error(rc, err, str(runs / "a"), "run directory itself")
    assert tree(runs.parent) == before


@pytest.mark.parametrize("case", ["user-files", "publish-plus-a-file", "foreign-config", "sibling-run"])
def test_force_refuses_a_folder_botnet_did_not_publish(runs, earlier, tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "user-files":
        out.mkdir()
        (out / "thesis.tex").write_text("a week of work\n")
    elif case == "publish-plus-a-file":  # an earlier publish the user added to
        shutil.copytree(earlier, out)
        (out / "eval.md").write_text("my results\n")
    elif case == "foreign-config":  # the same three names, but not botnet's config.json
        shutil.copytree(earlier, out)
        (out / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 10}))
    else:
        out = runs / "b"
    before = tree(tmp_path)
    rc, _, err = run(capsys, ["publish", runs / "a", out, "--force", "--no-eval"])
    assert_one_line_error(rc, err, f"OUT_DIR {out} ", "not a folder written by botnet publish")
    assert tree(tmp_path) == before


def test_a_symbolic_link_is_refused(runs, earlier, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(earlier, target_is_directory=True)
    before, before_target = tree(tmp_path), tree(earlier)
    rc, _, err = run(capsys, ["publish", runs / "a", link, "--force", "--no-eval"])
    assert_one_line_error(rc, err, str(link), "symbolic link")
    assert tree(tmp_path) == before and tree(earlier) == before_target


def test_earlier_publish_needs_force_and_is_then_swapped_in_whole(runs, earlier, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pub"
    shutil.copytree(earlier, out)
    before = tree(tmp_path)
    rc, _, err = run(capsys, ["publish", runs / "a", out, "--no-eval"])
    assert_one_line_error(rc, err, str(out), "--force")
    assert tree(tmp_path) == before

    # a failure while writing the new folder leaves the earlier publish as it was, and no temporary folder
    import botnet.hub.card as card

    def interrupted(info):
        raise KeyboardInterrupt

    monkeypatch.setattr(card, "classification_card", interrupted)
    assert main(["publish", str(runs / "a"), str(out), "--no-eval", "--force"]) == 130  # Ctrl-C
    assert tree(tmp_path) == before
    monkeypatch.undo()

    swaps = []
    real = dirswap.swap_into_place
    monkeypatch.setattr(dirswap, "swap_into_place", lambda a, b: swaps.append((a, b)) or real(a, b))
    import botnet.hub.publish as publish

    monkeypatch.setattr(publish, "swap_into_place", dirswap.swap_into_place)
    inode = out.stat().st_ino
    assert main(["publish", str(runs / "a"), str(out), "--no-eval", "--force", "--hardware", "another box"]) == 0
    assert len(swaps) == 1 and out.stat().st_ino != inode  # a new folder put in place in one step
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "another box" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub", "runs"]  # the old folder is gone, nothing else


def test_exchange_leaves_one_of_the_two_folders_at_every_instant(tmp_path):
    """The swap is one rename(2) exchange: the destination name never goes missing."""
    old, new = tmp_path / "dest", tmp_path / ".dest.tmp"
    old.mkdir()
    (old / "config.json").write_text("old")
    new.mkdir()
    (new / "config.json").write_text("new")
    if not dirswap._exchange(new, old):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system: publish falls back to two renames")
    assert (old / "config.json").read_text() == "new" and (new / "config.json").read_text() == "old"
    assert dirswap.remove_written(new, ["config.json"]) and not new.exists()


def test_what_a_killed_publish_left_is_cleared_by_the_next_one(demo_run, earlier, tmp_path, capsys):
    out = tmp_path / "pub"
    left = abandoned_temp(out)  # killed while writing, or right after swapping out the earlier publish
    (left / "part-000.tar").unlink()
    for f in earlier.iterdir():
        shutil.copy(f, left / f.name)
    (left / "mine.txt").write_text("a file publish did not write\n")
    rc, _, err = run(capsys, ["publish", demo_run, out, "--no-eval"])
    assert rc == 0, err
    assert sorted(p.name for p in left.iterdir()) == ["mine.txt"]  # publish's three files only
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in earlier.iterdir())
