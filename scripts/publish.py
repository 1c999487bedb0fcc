"""Uploads the zoo's checkpoint folders ``checkpoints/<name>/`` to their Hub repos ``privzoo/<name>``.

    python scripts/publish.py --dry-run            # list repo ids and files; no network, no token needed
    python scripts/publish.py                      # create_repo(exist_ok=True) + upload_folder for each
    python scripts/publish.py --only ppl-fashion-mnist-16bit [--only ...] [--private]

The token comes from the usual huggingface_hub places (``HF_TOKEN``, ``hf auth login``) or ``--token``.
Before anything is uploaded, every folder is loaded with ``from_pretrained`` (strict) and checked for pickle
files; a folder in ``checkpoints/`` without a zoo entry (``models/<method>/pretrained.py``) is an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models import zoo
from models.hub import PICKLE_SUFFIXES, HubLoadError, PickleWeightsError


@dataclass
class Upload:
    """One folder to upload: the zoo name, its Hub repo, the folder and its files (relative paths)."""

    name: str
    repo_id: str
    folder: Path
    files: list[str]

    def size(self) -> int:
        return sum((self.folder / f).stat().st_size for f in self.files)


def plan(only: list[str] | None = None, verify: bool = True) -> list[Upload]:
    """The uploads to do, each folder checked (loads strictly, no pickle files).

    Args:
        only: names to publish (default: every zoo entry).
        verify: load each folder with ``from_pretrained`` before listing it.

    Raises:
        models.zoo.UnknownCheckpointError: a name in ``only`` is not in the zoo.
        models.hub.HubLoadError: a folder is missing, incomplete, holds pickle files or does not load.
        ValueError: ``checkpoints/`` holds a folder that has no zoo entry.
    """
    if only:
        entries = [zoo.get_entry(name) for name in dict.fromkeys(only)]
    else:
        entries = zoo.zoo_entries()
        if zoo.CHECKPOINTS_DIR.is_dir():
            orphans = sorted(
                p.name for p in zoo.CHECKPOINTS_DIR.iterdir() if p.is_dir() and p.name not in zoo.REGISTRY
            )
            if orphans:
                raise ValueError(
                    f"{zoo.CHECKPOINTS_DIR} has folder(s) {orphans} without a zoo entry: add a ZooEntry to "
                    "the method's models/<method>/pretrained.py or remove them"
                )
    uploads = []
    for entry in entries:
        folder = zoo.folder(entry.name)
        if not folder.is_dir():
            raise HubLoadError(f"{entry.name}: {folder} does not exist; convert the checkpoint into it first")
        files = sorted(
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise PickleWeightsError(
                f"{folder} holds pickle file(s) {pickles}: the zoo publishes safetensors only; delete them"
            )
        if verify:
            entry.model_class.from_pretrained(folder)
        uploads.append(Upload(entry.name, entry.repo_id, folder, files))
    return uploads


def publish(
    uploads: list[Upload],
    dry_run: bool,
    token: str | None = None,
    private: bool | None = None,
    message: str = "Upload privzoo checkpoint",
    api_factory: Callable | None = None,
) -> list[str]:
    """Uploads (or with ``dry_run`` only prints) each folder; returns the commit URLs (dry run: repo ids)."""
    done = []
    api = None
    for up in uploads:
        print(f"{up.repo_id}  <-  {up.folder}/  ({up.size():,} bytes)")
        for f in up.files:
            print(f"    {f}  {(up.folder / f).stat().st_size:,} bytes")
        if dry_run:
            done.append(up.repo_id)
            continue
        if api is None:
            if api_factory is None:
                from huggingface_hub import HfApi as api_factory
            api = api_factory(token=token)
        repo_id = api.create_repo(
            repo_id=up.repo_id, repo_type="model", private=private, exist_ok=True
        ).repo_id
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(up.folder),
            allow_patterns=up.files,
            commit_message=f"{message}: {up.name}",
        )
        print(f"    uploaded: {getattr(commit, 'commit_url', commit)}")
        done.append(str(getattr(commit, "commit_url", commit)))
    if dry_run:
        print(f"dry run: {len(uploads)} repo(s) listed, nothing uploaded")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="list repo ids and files; no network")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="publish this checkpoint only (repeatable)"
    )
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repos private")
    parser.add_argument("--message", default="Upload privzoo checkpoint", help="commit message prefix")
    args = parser.parse_args(argv)
    try:
        uploads = plan(args.only)
    except (HubLoadError, KeyError, ValueError, ImportError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not uploads:
        print("nothing to publish: no method declares a zoo entry (models/<method>/pretrained.py)")
        return 0
    publish(uploads, args.dry_run, token=args.token, private=args.private, message=args.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
