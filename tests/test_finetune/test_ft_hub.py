"""Artifacts that round-trip through the hub, against stand-ins (no network): a hub dataset's stats.json decides the
tag tokens, `--push_to_hub` uploads the final model folder with its model card, and wandb falls back to offline."""

import json
from pathlib import Path

import pytest
from ft_helpers import save_dataset, save_tiny_model

from finetune.__main__ import main
from finetune.data import pushed_as, tag_tokens_setting
from finetune.hub import base_license, model_card, push_model
from pipeline.dataset import DatasetError
from pipeline.tracking import offline_unless_logged_in

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true"]


def not_there(url="https://huggingface.co/datasets/you/plain/resolve/main/stats.json"):
    import httpx
    from huggingface_hub.errors import RemoteEntryNotFoundError

    return RemoteEntryNotFoundError("404 Client Error. Entry Not Found", response=httpx.Response(
        404, request=httpx.Request("GET", url)))


@pytest.fixture
def hub_files(tmp_path, monkeypatch):
    """hf_hub_download served from {repo_id: {filename: text}}; records what it was asked."""
    import huggingface_hub

    files, calls = {}, []

    def download(repo_id, filename, repo_type=None, **kwargs):
        calls.append((repo_id, filename, repo_type))
        if repo_id not in files:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("offline, and the file is not in the cache")
        if filename not in files[repo_id]:
            raise not_there()
        path = tmp_path / "hub" / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[repo_id][filename])
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return files, calls


def test_a_hub_dataset_follows_the_tag_tokens_of_its_stats_json(hub_files):
    files, calls = hub_files
    files["you/pasta-set"] = {"stats.json": json.dumps({"tag_tokens": True})}
    assert tag_tokens_setting("you/pasta-set", None) is True
    assert calls == [("you/pasta-set", "stats.json", "dataset")]
    with pytest.raises(DatasetError, match="measured its promise lengths and costs with tag_tokens=True"):
        tag_tokens_setting("you/pasta-set", False)


def test_a_hub_dataset_without_stats_json_is_read_as_a_jsonl(hub_files):
    files, _ = hub_files
    files["you/plain"] = {}
    assert tag_tokens_setting("you/plain", None) is False and tag_tokens_setting("you/plain", True) is True


def test_an_unreachable_hub_dataset_is_one_line(hub_files):
    with pytest.raises(DatasetError) as err:
        tag_tokens_setting("you/elsewhere", None)
    assert str(err.value).startswith("you/elsewhere: cannot read stats.json from the hub (LocalEntryNotFoundError")


def test_a_run_folder_reads_its_datasets_stats(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset/stats.json").write_text(json.dumps({"tag_tokens": True}))
    assert tag_tokens_setting(tmp_path, None) is True


def test_a_model_card_names_the_hub_id_its_dataset_was_pushed_to(tmp_path):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"config": {"push_to_hub": False, "hub_repo_id": "you/pasta-set"}}))
    assert pushed_as(tmp_path) == str(tmp_path)
    stats.write_text(json.dumps({"config": {"push_to_hub": True, "hub_repo_id": "you/pasta-set"}}))
    assert pushed_as(tmp_path) == "you/pasta-set" and pushed_as("you/other") == "you/other"


@pytest.fixture
def uploads(monkeypatch):
    """HfApi.create_repo and upload_folder recorded (with the README and the file names as uploaded)."""
    import huggingface_hub

    repos, pushed = [], []

    def create_repo(api, repo_id, repo_type=None, private=None, exist_ok=False, **kwargs):
        repos.append((repo_id, repo_type, private))

    def upload_folder(api, repo_id, folder_path, repo_type=None, **kwargs):
        folder = Path(folder_path)
        pushed.append({"repo": repo_id, "folder": folder, "type": repo_type,
                       "readme": (folder / "README.md").read_text(), "files": sorted(p.name for p in folder.iterdir())})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return repos, pushed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    (root / "data").mkdir()
    return {"data": save_dataset(root / "data"), "model": save_tiny_model(root / "model", "llama", tied=True)}


def card_of(text: str):
    from huggingface_hub import ModelCard

    return ModelCard(text)


def test_push_uploads_each_final_model_with_its_card(tiny, tmp_path, uploads, capsys):
    repos, pushed = uploads
    flags = ["--run_dir", str(tmp_path), "--dataset", tiny["data"], "--model_name_or_path", tiny["model"], *FAST,
             "--push_to_hub", "--hub_model_id", "you/tiny-pasta", "--hub_license", "apache-2.0"]
    assert main([*flags, "--variant", "both"]) == 0
    models = tmp_path / "models"
    assert [(p["repo"], p["folder"], p["type"]) for p in pushed] == [
        ("you/tiny-pasta", models / "pasta-sft", "model"),
        ("you/tiny-pasta-baseline", models / "baseline-sft", "model")]
    assert repos == [("you/tiny-pasta", "model", None), ("you/tiny-pasta-baseline", "model", None)]  # not the Trainer's
    assert {"README.md", "config.json", "model.safetensors", "training.json"} <= set(pushed[0]["files"])
    card = card_of(pushed[0]["readme"])
    assert (card.data.license, card.data.library_name, card.data.pipeline_tag) == ("apache-2.0", "transformers",
                                                                                   "text-generation")
    assert card.data.base_model is None and card.data.datasets is None  # local paths: named in the text only
    assert "pasta-lang" in card.data.tags and f"- Base model: `{tiny['model']}`" in card.text
    assert "python -m interpreter generate --model you/tiny-pasta --prompt" in card.text
    assert "Tag tokens: no" in card.text and "| `max_steps` | 2 |" in card.text
    assert "| `method` | full finetuning |" in card.text and "| `optimizer steps` | 2 |" in card.text
    assert "Baseline-SFT, the control" in card_of(pushed[1]["readme"]).text
    assert (models / "pasta-sft" / "README.md").read_text() == pushed[0]["readme"]  # the folder is what was pushed

    assert main([*flags, "--hub_model_id", "you/again"]) == 0  # trained already: pushed as it is
    assert "already trained" in capsys.readouterr().err and pushed[-1]["repo"] == "you/again"


@pytest.mark.parametrize("extra, message", [
    (["--hub_license", "mit"], "--push_to_hub needs --hub_model_id (e.g. you/smollm2-pasta)"),
    (["--hub_model_id", "you/x"], "no license known for MODEL; pass --hub_license (the base model's"),
])
def test_push_flags_are_checked_before_training(tiny, tmp_path, capsys, extra, message):
    assert main(["--run_dir", str(tmp_path), "--dataset", tiny["data"], "--model_name_or_path", tiny["model"], *FAST,
                 "--push_to_hub", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m finetune: error: ") and message.replace("MODEL", tiny["model"]) in err
    assert not (tmp_path / "models").exists()


def test_base_license_known_or_read_from_the_base_models_card(tmp_path):
    assert base_license("smollm2-135m-instruct") == "apache-2.0"
    assert base_license(str(tmp_path)) is None
    (tmp_path / "README.md").write_text("---\nlicense: gemma\n---\n# A model\n")
    assert base_license(str(tmp_path)) == "gemma"


def test_model_card_names_hub_ids_in_its_metadata():
    card = model_card("you/smol-pasta", {"base_model": "smollm2-135m-instruct", "datasets": "you/pasta-set",
                                         "license": "apache-2.0", "tag_tokens": True, "recipe": {"lr": 1e-4}})
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.datasets == ["you/pasta-set"]
    assert "Tag tokens: yes" in card.text and "| `lr` | 0.0001 |" in card.text and "# you/smol-pasta" in card.text


def test_push_model_needs_a_license(tmp_path):
    with pytest.raises(ValueError, match="the model card needs a license"):
        push_model(tmp_path, "you/x", {"base_model": "b", "tag_tokens": False}, private=True)


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


@pytest.mark.parametrize("report_to, offline", [(["wandb"], True), ("all", True), (["tensorboard"], False),
                                                ("none", False), ([], False)])
def test_wandb_logs_offline_without_a_login(no_wandb_login, report_to, offline):
    import os

    assert offline_unless_logged_in(report_to) is offline
    assert os.environ.get("WANDB_MODE") == ("offline" if offline else None)


@pytest.mark.parametrize("setup", ["key", "netrc", "mode"])
def test_wandb_stays_as_set_up(no_wandb_login, monkeypatch, setup):
    import os

    if setup == "key":
        monkeypatch.setenv("WANDB_API_KEY", "k")
    elif setup == "netrc":
        no_wandb_login.write_text("machine api.wandb.ai\n  login user\n  password k\n")
    else:
        monkeypatch.setenv("WANDB_MODE", "online")
    assert offline_unless_logged_in(["wandb"]) is False
    assert os.environ.get("WANDB_MODE") == ("online" if setup == "mode" else None)


def test_finetune_falls_back_to_offline_wandb(tiny, tmp_path, no_wandb_login, monkeypatch):
    import os

    import finetune.sft

    trained = []
    monkeypatch.setattr(finetune.sft, "train", lambda variant, *args: trained.append(variant) or {})
    assert main(["--run_dir", str(tmp_path), "--model_name_or_path", tiny["model"], "--bf16", "false",
                 "--report_to", "wandb"]) == 0
    assert trained == ["pasta"] and os.environ["WANDB_MODE"] == "offline"


def test_prefopt_pushes_each_round_and_lambda_with_its_card(tmp_path, uploads):
    from ft_helpers import preference_run

    from finetune.prefopt import main as prefopt

    repos, pushed = uploads
    policy = preference_run(tmp_path, prompts=2)
    assert prefopt(["--run_dir", str(tmp_path), "--lambdas", "1", "--samples", "3", "--num_prompts", "2",
                    "--max_new_tokens", "24", "--proxy_reference", policy, "--max_steps", "1",
                    "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
                    "--use_cpu", "true", "--push_to_hub", "--hub_model_id", "you/po", "--hub_license", "mit"]) == 0
    assert [(p["repo"], p["folder"]) for p in pushed] == [("you/po-l1-r1", tmp_path / "models" / "prefopt-l1-r1")]
    card = card_of(pushed[0]["readme"])
    assert card.data.license == "mit" and "| `method` | BoNBoN, full finetuning |" in card.text
    assert "Tag tokens: yes" in card.text  # the policy's tokenizer holds the tag pieces
