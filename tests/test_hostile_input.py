"""Hostile input must not delete, corrupt or crash (issue 12): dataset folders, meta.json, storages, journals."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hexsweep import study as study_cli
from hexsweep.cli import compose
from hexsweep.data.generate import generate
from hexsweep.data.import_trmph import import_trmph
from hexsweep.data.shards import read_meta
from hexsweep.errors import DataError
from hexsweep.search.storage import open_storage

GAMES = """\
http://www.trmph.com/hex/board#5,a1b1a2b2a3b3a4b4a5 1
http://www.trmph.com/hex/board#5,c3a1b1a2b2a3b3a4b4a5 2
http://www.trmph.com/hex/board#5,c3d3c4d4c5d5c2d2c1 1
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def import_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hexsweep.data.import_trmph", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def games(tmp_path) -> Path:
    folder = tmp_path / "games"
    (folder / "notes").mkdir(parents=True)
    (folder / "g.trmph").write_text(GAMES)
    (folder / "notes" / "README.txt").write_text("my notes\n")
    return folder


@pytest.mark.parametrize("force", [False, True])
def test_import_into_its_own_input_folder_deletes_nothing(games, force):
    before = snapshot(games.parent)
    out = import_cli(str(games), "--out", str(games), *(["--force"] if force else []))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hexsweep: error: ") and str(games) in lines[0], out.stderr
    assert "not even with --force" in lines[0]
    assert snapshot(games.parent) == before
    assert sorted(p.name for p in games.parent.iterdir()) == ["games"]  # no temp folder left beside it


def test_import_refuses_a_folder_that_is_not_a_dataset_unless_forced(games, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious\n")
    out = import_cli(str(games), "--out", str(other))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hexsweep: error: {other} exists and is not a hexsweep dataset")
    assert "--force overrides" in lines[0]
    assert (other / "keep.txt").read_text() == "precious\n"
    forced = import_cli(str(games), "--out", str(other), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (other / "keep.txt").exists() and read_meta(other)["splits"]["train"]["games"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["games", "other"]
    assert snapshot(games) == {"g.trmph": GAMES.encode(), "notes/README.txt": b"my notes\n"}


def test_import_replaces_an_earlier_dataset_whole(games, tmp_path):
    out = tmp_path / "ds"
    import_trmph([str(games)], out, seed=0)
    (out / "stray.txt").write_text("left by hand\n")
    meta, _ = import_trmph([str(games)], out, seed=7)  # a dataset (meta.json): replaced without --force
    assert read_meta(out)["source"]["seed"] == 7 and meta["source"]["seed"] == 7
    assert not (out / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "games"]  # no temp or old folder left


def test_import_never_replaces_a_dataset_that_holds_its_input(games, tmp_path):
    out = tmp_path / "ds"
    import_trmph([str(games)], out)
    (out / "more.trmph").write_text(GAMES)
    with pytest.raises(DataError, match="is or holds the input"):
        import_trmph([str(games), str(out / "more.trmph")], out, force=True)
    assert (out / "more.trmph").read_text() == GAMES


def test_generate_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    data = compose(["data=tiny", "data.num_positions=100"]).data
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work\n")
    with pytest.raises(DataError, match="is not a hexsweep dataset") as err:
        generate(data, folder, workers=1, progress=False)
    assert "\n" not in str(err.value) and "--force" not in str(err.value)
    assert (folder / "thesis.tex").read_text() == "years of work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    folder.joinpath("thesis.tex").unlink()  # an empty folder is fine
    assert generate(data, folder, workers=1, progress=False)["board_size"] == 5


@pytest.mark.parametrize("content, reason", [
    (b"[]", "holds a JSON list, not an object"),
    (b"\xff\xfe\x00garbage", "is not UTF-8 text"),
    (b'{"format_version": 1, "board_size": 5, "splits": []}', "is malformed"),
    (b'{"format_version": 1, "board_size": 5, "splits": {"train": {"positions": 3}}}', "is malformed"),
])
def test_malformed_meta_json_is_one_line_naming_the_file(tmp_path, content, reason):
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(DataError) as err:
        read_meta(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "meta.json")) and reason in message and "\n" not in message


@pytest.mark.parametrize("storage", ["typo/studies.journal", "sqlite:///typo/s.db", "sqlite:///s.db"])
@pytest.mark.parametrize("command", [["list"], ["best", "--study", "s"], ["trials", "--study", "s"],
                                     ["importance", "--study", "s"], ["plot", "--study", "s"]])
def test_read_commands_never_create_storage(tmp_path, monkeypatch, capsys, storage, command):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        study_cli.main(["--storage", storage, *command])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hexsweep: error: no storage at {storage}: ")
    assert list(tmp_path.iterdir()) == []


def test_read_command_on_an_empty_sqlite_file_creates_no_tables(tmp_path, capsys):
    db = tmp_path / "empty.db"
    db.touch()
    with pytest.raises(SystemExit):
        study_cli.main(["--storage", f"sqlite:///{db}", "list"])
    assert "holds no Optuna tables" in capsys.readouterr().err
    assert db.stat().st_size == 0


def test_read_commands_still_read(tmp_path, capsys):
    journal = tmp_path / "studies.journal"
    optuna.create_study(study_name="s", storage=open_storage(str(journal))).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study_cli.main(["--storage", str(journal), "best", "--study", "s"])
    assert "best trial" in capsys.readouterr().out


def test_torn_journal_tail_is_cut_off_with_a_backup_before_appending(tmp_path, caplog):
    journal = tmp_path / "optuna" / "studies.journal"
    optuna.create_study(study_name="t", storage=open_storage(str(journal))).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    journal.write_bytes(whole + last[: len(last) // 2])  # a writer killed mid-line
    torn = journal.read_bytes()
    with caplog.at_level(logging.WARNING, logger="hexsweep.search.storage"):
        storage = open_storage(str(journal))
    backups = list(journal.parent.glob("studies.journal.torn-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn
    assert journal.read_bytes() == whole
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and str(journal) in warning[0] and str(backups[0]) in warning[0]
    optuna.load_study(study_name="t", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    reread = optuna.load_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state.name for t in reread.trials] == ["COMPLETE"] * 4
    caplog.clear()
    open_storage(str(journal))  # a whole journal is left alone
    assert not caplog.records and len(list(journal.parent.glob("studies.journal.torn-*"))) == 1


def test_journal_line_that_is_not_json_is_cut_off_too(tmp_path):
    journal = tmp_path / "studies.journal"
    optuna.create_study(study_name="t", storage=open_storage(str(journal)))
    whole = journal.read_bytes()
    journal.write_bytes(whole + b"\x00\x00\x00\n")  # a crash that left zeros (e.g. after power loss)
    open_storage(str(journal))
    assert journal.read_bytes() == whole



def _journal_of_two_trials(tmp_path):
    journal = tmp_path / "good.journal"
    optuna.create_study(study_name="s", storage=open_storage(str(journal))).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return journal.read_bytes()


@pytest.mark.parametrize("damage, reason", [
    (lambda good: b"\xff\xfe\x00 a UTF-16 file\n", "line 1 is not UTF-8 text"),
    (lambda good: good[:40] + b"\xff" + good[40:], "line 1 is not UTF-8 text"),
    (lambda good: good.replace(b"\n", b"\nnot json\n", 1), "line 2 is not JSON"),
    (lambda good: b'{"hello": "world"}\n', "line 1 is not an Optuna journal record (no op_code)"),
    (lambda good: b"[1, 2, 3]\n", "line 1 is not an Optuna journal record (no op_code)"),
    (lambda good: good + b'{"op_code": 99, "worker_id": "w"}\n',
     f"a record with an op_code this Optuna ({optuna.__version__}) does not know"),
], ids=["utf16", "binary-inside", "text-line", "foreign-json", "json-list", "unknown-op"])
@pytest.mark.parametrize("command", [["list"], ["best", "--study", "s"]])
def test_study_commands_on_a_damaged_or_foreign_journal_are_one_line_naming_it(tmp_path, capsys, damage, reason,
                                                                              command):
    journal = tmp_path / "studies.journal"
    journal.write_bytes(damage(_journal_of_two_trials(tmp_path)))
    before = journal.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        study_cli.main(["--storage", str(journal), *command])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"hexsweep: error: storage {journal} is damaged or not an Optuna journal: {reason}")
    assert journal.read_bytes() == before  # a query changes nothing


@pytest.mark.parametrize(("text", "why"), [
    ("interval(1,0)", "`low <= high` must hold"),
    ("tag(log,interval(-1,1))", "`low > 0` must hold for `log=True`"),
    ("range(5,1)", "`low <= high` must hold"),
])
def test_a_search_range_optuna_refuses_is_one_line_naming_it(text, why):
    """Optuna's own check of a distribution's bounds (a ValueError, a traceback before) becomes
    the one line of a ConfigError naming the key and the value."""
    from hexsweep.errors import ConfigError
    from hexsweep.search.space import parse_params

    with pytest.raises(ConfigError) as e:
        parse_params({"optim.lr": text})
    assert str(e.value).startswith(f"hydra.sweeper.params.optim.lr={text!r} is invalid: ") and why in str(e.value)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize(("override", "why"), [
    ("optim.lr=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("batch_size=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
])
def test_a_value_of_the_wrong_type_keeps_its_reason(override, why):
    """Hydra's "Error merging override" leaves the reason to its cause: the one line says both."""
    from hexsweep.errors import HexsweepError

    with pytest.raises(HexsweepError) as e:
        compose(["debug=tiny", override])
    assert str(e.value) == f"Error merging override {override}: {why}"


def test_the_resume_command_is_the_whole_command_quoted_with_no_password():
    from omegaconf import OmegaConf

    from hexsweep.sweep.stopping import resume_command

    config = OmegaConf.create({"hydra": {"overrides": {
        "task": ["seed=0,1", "optim.lr=tag(log,interval(1e-4,1e-2))", "resume=wait"],
        "hydra": ["hydra.sweep.dir=old", "hydra.mode=MULTIRUN",
                  "hydra.sweeper.storage=postgresql://me:hunter2@db/optuna"]}}})
    line = resume_command("python -m hexsweep.train", config, Path("/s w"), ["resume=true"])
    assert line == ("python -m hexsweep.train -m seed=0,1 'optim.lr=tag(log,interval(1e-4,1e-2))' "
                    "'hydra.sweeper.storage=postgresql://me:***@db/optuna' 'hydra.sweep.dir=/s w' resume=true")


@pytest.mark.parametrize(("args", "line"), [
    (["experiment=polcy_heavy,policy_heavy"], "experiment=polcy_heavy is not an option of the experiment group: "
                                              "allowed balanced_high_lr, balanced_high_weight_decay, "
                                              "balanced_no_dropout, balanced_weights, policy_heavy, "
                                              "policy_intermediate"),
    (["search=hex_tp"], "search=hex_tp is not an option of the search group: allowed hex_tpe, race"),
    (["search=glob(hex_tp?x*)"], "search=glob(hex_tp?x*) matches no option of the search group: allowed hex_tpe, race"),
])
def test_a_misspelled_group_option_in_a_sweep_is_one_line(tmp_path, args, line):
    """Under -m, Hydra's sweeper meets it first, with its multi-line error and exit 1."""
    out = subprocess.run([sys.executable, "-m", "hexsweep.train", "-m", "debug=tiny", *args,
                          f"paths.outputs={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr == f"hexsweep: error: {line}\n"
    assert not (tmp_path / "out" / "multirun").exists()


def test_the_reproduce_command_carries_the_thread_count_the_trial_ran_with(tmp_path):
    """A trial's value depends on its thread count in the last digits: without it the command
    trained another value (1.0766 against the trial's 1.0730)."""
    from optuna.distributions import FloatDistribution

    from hexsweep.report.study import reproduce_command

    job = tmp_path / "3"
    job.mkdir()
    (job / "result.json").write_text('{"status": "completed", "num_threads": 1}')

    def trial(job_dir, overrides):
        return optuna.trial.create_trial(params={"optim.lr": 0.01}, distributions={"optim.lr": FloatDistribution(
            1e-4, 1e-1)}, value=1.07, user_attrs={"job_dir": str(job_dir), "overrides": overrides})

    assert reproduce_command(trial(job, ["optim.lr=0.01", "seed=3"])) == \
        "python -m hexsweep.train optim.lr=0.01 seed=3 num_threads=1"
    assert reproduce_command(trial(job, ["num_threads=2"])) == "python -m hexsweep.train num_threads=2"
    assert reproduce_command(trial(tmp_path / "gone", ["seed=3"])) == "python -m hexsweep.train seed=3"
