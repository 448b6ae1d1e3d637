"""Result tables go to the trackers a run names; wandb without an account logs offline."""

import json

from pipeline.tracking import log_results

ROWS = [{"method": "sequential", "win_rate": 50.0}, {"method": "pasta", "win_rate": 41.5, "cut": 2}]


def test_results_are_logged_as_a_wandb_table_offline_and_as_tensorboard_text(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):  # set, then removed: the test leaves them as they were
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no login anywhere: offline, not a login prompt
    log_results(["wandb", "tensorboard"], ROWS, tmp_path, config={"judge": "proxy"})
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/results_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["method", "win_rate", "cut"] and table["data"][1] == ["pasta", 41.5, 2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_no_tracker_named_writes_nothing(tmp_path):
    log_results([], ROWS, tmp_path)
    log_results(["none"], ROWS, tmp_path)
    assert not list(tmp_path.iterdir())
