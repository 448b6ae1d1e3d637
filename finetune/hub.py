"""Pushing a trained model to the hub: its final model folder with a model card (README.md).

`push_model` is what every trainer calls (`python -m finetune`, `finetune.prefopt`): it writes the card into the
folder, so the folder on disk and the repo hold the same files, then uploads the folder in one commit.
"""

from __future__ import annotations

import os
from pathlib import Path

from interpreter import EMBEDDED_MODEL, has_tag_tokens, load_tokenizer
from pipeline.dataset import HUB_ID

# the embedded alias -> (the hub model it is a copy of, that model's license)
KNOWN = {EMBEDDED_MODEL: ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
         "HuggingFaceTB/SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
TAGS = ["pasta", "pasta-lang", "parallel-decoding", "asynchronous-decoding"]
PASTA = ('A PASTA model (Jin et al., "Learning to Keep a Promise", ICML 2025): it answers with Pasta-Lang tags '
         "(`<promise/>`, `<async>`, `<sync/>`) around the independent parts of its answer, and the PASTA interpreter "
         "decodes those parts in parallel. Loaded with plain transformers, it writes the tags as text.")


def hub_id(name: str | None) -> str | None:
    """The hub model or dataset id `name` stands for: the embedded alias's original, an owner/name that is no local
    path, or None (a local folder: the hub's metadata may only name hub repos)."""
    if not name:
        return None
    if name in KNOWN:
        return KNOWN[name][0]
    return name if HUB_ID.fullmatch(name) and not os.path.exists(name) else None


def base_license(base: str | None) -> str | None:
    """The license of base model `base` as far as it is known here: the embedded model's, or the `license` of the
    model card in a local folder (a model this project pushed, or one downloaded with its README)."""
    if base in KNOWN:
        return KNOWN[base][1]
    readme = Path(base or "") / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.get("license")


def model_card(repo_id: str, card_data: dict):
    """The ModelCard of `repo_id` from `card_data` (see `push_model`)."""
    from huggingface_hub import ModelCard, ModelCardData

    base, datasets = card_data["base_model"], card_data.get("datasets") or []
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    meta = ModelCardData(base_model=hub_id(base), datasets=[d for d in map(hub_id, datasets) if d] or None,
                         license=card_data["license"], language=["en"], library_name="transformers",
                         pipeline_tag="text-generation", tags=TAGS + list(card_data.get("tags", [])))
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n{_body(repo_id, card_data, base, datasets)}")


def _body(repo_id: str, card_data: dict, base: str, datasets: list[str]) -> str:
    tags = ("yes: the tag pieces are added tokens of this tokenizer" if card_data["tag_tokens"] else
            "no: the tags are plain text in the base model's tokenizer")
    recipe = "\n".join(f"| `{k}` | {v} |" for k, v in card_data.get("recipe", {}).items())
    return f"""
# {card_data.get("title", repo_id)}

{card_data.get("summary", PASTA)}

- Base model: {_named(base)}
- Dataset: {", ".join(map(_named, datasets)) or "not recorded"}
- Tag tokens: {tags}
- License: {card_data["license"]} (the base model's)

## Usage

With this project's interpreter installed:

```bash
python -m interpreter generate --model {repo_id} --prompt "Give me three tips to sleep well."
# the same answer decoded one token at a time, for comparison
python -m interpreter generate --model {repo_id} --mode sequential --prompt "Give me three tips to sleep well."
```

## Training recipe

| argument | value |
| --- | --- |
{recipe}
"""


def _named(name: str) -> str:
    hub = hub_id(name)
    return f"`{name}`" if hub in (None, name) else f"`{name}` (a copy of `{hub}`)"


def push_model(folder: str | Path, repo_id: str, card_data: dict, private: bool | None = None,
               token: str | None = None) -> str:
    """Writes the model card to <folder>/README.md and uploads `folder` to model repo `repo_id` (created if missing,
    `private` when it is); returns the commit's URL.

    card_data keys: `base_model` (hub id, embedded alias or local path; only a hub id goes in the metadata),
    `license` (required, the base model's), `datasets` (id or path, or a list; hub ids go in the metadata),
    `tag_tokens` (bool; default: whether the folder's tokenizer has the tag pieces as tokens), `recipe` (dict of
    the training arguments that matter, shown as a table), and optionally `title`, `summary` (the paragraph under
    it; default: what a PASTA model is) and `tags` (beside the PASTA ones)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not card_data.get("license"):
        raise ValueError(f"pushing {folder}: the model card needs a license (the base model's)")
    if "tag_tokens" not in card_data:
        card_data = {**card_data, "tag_tokens": has_tag_tokens(load_tokenizer(str(folder)))}
    model_card(repo_id, card_data).save(folder / "README.md")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=f"PASTA model from {card_data['base_model']}")
    return str(getattr(info, "commit_url", info))
