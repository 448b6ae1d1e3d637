"""The dataset card (a huggingface_hub DatasetCard) and `--push_to_hub`, against a fake hub: datasets' push_to_hub,
hf_hub_download and HfApi.create_commit are replaced by stand-ins that keep the repo's files in a folder."""

import json
from pathlib import Path

import pytest
from dg_common import instruction_source, list_answer, student_dir

from data_gen import writer
from data_gen.cli import main


class FakeHub:
    """A dataset repo in a folder: what datasets' push_to_hub, hf_hub_download and create_commit would do to it."""

    def __init__(self, root: Path, monkeypatch):
        import datasets
        import huggingface_hub

        self.root, self.pushes, self.commits = root, [], []
        # functions, not bound methods, on the classes: the DatasetDict or HfApi comes as their first argument
        monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda *a, **kw: self.push_to_hub(*a, **kw))
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda *a, **kw: self.create_commit(*a, **kw))
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.download)

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def push_to_hub(self, data, repo_id, **kwargs):
        """As datasets does: parquet files, and the README's `configs` and `dataset_info` updated in its metadata
        (the card's text and other metadata kept, or a stub card for a new repo)."""
        from huggingface_hub import DatasetCard

        self.pushes.append((repo_id, kwargs, {name: len(split) for name, split in data.items()}))
        readme = self.repo(repo_id) / "README.md"
        card = DatasetCard(readme.read_text() if readme.exists() else "---\n{}\n---\n# Dataset Card for stub\n")
        card.data["configs"] = [{"config_name": "default", "data_files": [
            {"split": name, "path": f"data/{name}-*"} for name in data]}]
        card.data["dataset_info"] = {"splits": [{"name": name, "num_examples": len(split)}
                                                for name, split in data.items()]}
        readme.parent.mkdir(parents=True, exist_ok=True)
        readme.write_text(str(card))

    def download(self, repo_id, filename, repo_type=None, **kwargs):
        assert repo_type == "dataset"
        return str(self.repo(repo_id) / filename)

    def create_commit(self, api, repo_id, operations, commit_message=None, repo_type=None, **kwargs):
        assert repo_type == "dataset"
        self.commits.append((repo_id, [op.path_in_repo for op in operations], commit_message))
        for op in operations:
            content = op.path_or_fileobj
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            (self.repo(repo_id) / op.path_in_repo).write_bytes(data)


def build(tmp_path, *flags):
    source = instruction_source(tmp_path, [list_answer(i) for i in range(6)])
    return main(["--source", str(source), "--student", student_dir(tmp_path), "--run_dir",
                 str(tmp_path / "runs" / "t"), *flags])


def load_card(path: Path):
    from huggingface_hub import DatasetCard

    return DatasetCard.load(path)


def test_the_local_card_is_a_dataset_card_with_the_stats_tables(tmp_path):
    assert build(tmp_path) == 0
    card = load_card(tmp_path / "runs/t/dataset/README.md")
    assert card.data.language == ["en"] and card.data.task_categories == ["text-generation"]
    assert card.data.pretty_name == "PASTA annotated answers (t)" and "pasta-lang" in card.data.tags
    assert card.data.license is None  # a local JSONL source: its license is not known here
    for heading in ("# PASTA annotated answers: `t`", "## Columns", "| rule | rejected | meaning |",
                    "| fix | examples | meaning |", "![theoretical speedup](speedup_hist.png)"):
        assert heading in card.text


@pytest.mark.parametrize("source, license, expected", [
    ("seed", None, ("apache-2.0", ["original"])),
    ("Open-Orca/SlimOrca", "mit", ("mit", ["Open-Orca/SlimOrca"])),
    ("data/answers.jsonl", "cc-by-4.0", ("cc-by-4.0", None)),  # a local file (that looks like a hub id)
])
def test_card_metadata_names_license_and_source(source, license, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/answers.jsonl").write_text("")
    data = writer.card_data({"source": source, "run": "r", "kept": 2400, "config": {"hub_license": license}})
    assert (data.license, data.source_datasets) == expected and data.size_categories == ["1K<n<10K"]


def test_push_keeps_the_configs_that_push_to_hub_wrote(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub", monkeypatch)
    assert build(tmp_path, "--push_to_hub", "--hub_repo_id", "you/pasta-t", "--hub_license", "mit") == 0
    out, repo = tmp_path / "runs/t/dataset", hub.repo("you/pasta-t")
    stats = json.loads((out / "stats.json").read_text())
    assert hub.pushes == [("you/pasta-t", {"private": True}, {"train": stats["train"], "test": stats["test"]})]
    assert [c[:2] for c in hub.commits] == [("you/pasta-t", ["README.md", "stats.json", "speedup_hist.png"])]
    pushed, local = load_card(repo / "README.md"), load_card(out / "README.md")
    assert pushed.text == local.text  # the card's content as built: the stats tables, not the stub
    assert pushed.data.license == "mit" and pushed.data.task_categories == ["text-generation"]
    assert [f["split"] for f in pushed.data.configs[0]["data_files"]] == ["train", "test"]
    assert "dataset_info" in pushed.data and "configs" not in local.data  # the hub's keys stay on the hub
    for name in ("stats.json", "speedup_hist.png"):
        assert (repo / name).read_bytes() == (out / name).read_bytes()


def test_a_second_push_refreshes_the_card_and_keeps_the_configs(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub", monkeypatch)
    flags = ["--push_to_hub", "--hub_repo_id", "you/pasta-t", "--hub_license", "mit"]
    assert build(tmp_path, *flags) == 0
    assert build(tmp_path, *flags[:-1], "apache-2.0") == 0
    pushed = load_card(hub.repo("you/pasta-t") / "README.md")
    assert pushed.data.license == "apache-2.0" and pushed.data.configs and len(hub.commits) == 2


def test_pushing_a_dataset_of_unknown_license_is_refused(tmp_path, capsys):
    assert build(tmp_path, "--push_to_hub", "--hub_repo_id", "you/pasta-t") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m data_gen: error: --push_to_hub of a dataset built from ") and "\n" not in err
    assert err.endswith("needs --hub_license (the source's license, e.g. mit for Open-Orca/SlimOrca)")
