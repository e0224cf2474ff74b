"""Folders and the Hugging Face Hub for the library's saved values (schedules, profiles, generation configs).

:class:`PretrainedJSON` gives a class with ``to_dict``/``from_dict`` the transformers-style trio:

* ``save_pretrained(save_directory)`` writes one JSON file (``cls.FILENAME``) into a folder, e.g. a model folder;
* ``from_pretrained(path_or_repo_id, subfolder=...)`` reads it back from a file, a folder (a model folder with the
  file in ``subfolder``) or a Hub repository id (through ``huggingface_hub``, which honours ``HF_HUB_OFFLINE`` and
  its local cache);
* ``push_to_hub(repo_id)`` uploads the same file to a Hub repository.

Every file carries ``format`` and ``version`` fields; a file from a newer format version is refused with a
message that names the file and says to upgrade (:func:`mdm_sched._io.check_format`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ._io import atomic_write_json, read_json

__all__ = ["PretrainedJSON", "resolve_file"]

T = TypeVar("T", bound="PretrainedJSON")


def _is_repo_id(text: str) -> bool:
    """A Hub id looks like ``name`` or ``owner/name``: no backslash, at most one slash, not a relative path."""
    return bool(text) and "\\" not in text and text.count("/") <= 1 and not text.startswith((".", "/", "~"))


def _hub_download(repo_id: str, filename: str, *, subfolder: str | None, revision: str | None,
                  cache_dir: str | os.PathLike | None, token: str | bool | None, local_files_only: bool,
                  repo_type: str | None, what: str) -> Path:
    """``hf_hub_download`` with its errors turned into one line that says what was looked for and where."""
    import huggingface_hub
    from huggingface_hub import errors

    if cache_dir is None and os.environ.get("HF_HUB_CACHE"):
        cache_dir = os.environ["HF_HUB_CACHE"]  # read now: huggingface_hub fixes its default at import time
    where = f"{repo_id}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, subfolder=subfolder or None, revision=revision,
                                                    cache_dir=cache_dir, token=token, repo_type=repo_type,
                                                    local_files_only=local_files_only))
    except errors.LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"{what} file {filename} of Hub repository {where} is not in the local cache and the "
                                f"Hub cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): "
                                "download it once online, or pass a local folder") from exc
    except (errors.EntryNotFoundError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
        raise FileNotFoundError(f"no {what} file {filename} in Hub repository {where}: {type(exc).__name__}; "
                                f"save one with save_pretrained/push_to_hub") from exc
    except errors.HFValidationError as exc:
        raise FileNotFoundError(f"{repo_id!r} is neither an existing file or folder nor a valid Hub repository id "
                                f"({exc})") from exc


def resolve_file(path_or_repo_id: str | os.PathLike, filename: str, *, subfolder: str | None = None,
                 revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 token: str | bool | None = None, local_files_only: bool = False, repo_type: str | None = None,
                 what: str = "mdm_sched") -> Path:
    """The local path of ``filename`` for a file, a folder (``folder/subfolder/filename``) or a Hub repository id.

    A path that exists locally always wins over a Hub id of the same spelling, as in transformers.
    """
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise TypeError(f"path_or_repo_id must be a path or a Hub repository id, got {type(path_or_repo_id).__name__}")
    path = Path(path_or_repo_id).expanduser()
    if path.is_file():
        if subfolder:
            raise ValueError(f"subfolder={subfolder!r} was given with a file path ({path}); pass the folder instead")
        return path
    if path.is_dir():
        target = path / (subfolder or "") / filename
        if not target.is_file():
            near = sorted(p.name for p in target.parent.glob("*.json")) if target.parent.is_dir() else []
            raise FileNotFoundError(f"no {what} file {filename} in {target.parent}"
                                    + (f" (JSON files there: {', '.join(near)})" if near else "")
                                    + "; write one with save_pretrained, or pass subfolder= / the file itself")
        return target
    text = os.fspath(path_or_repo_id)
    if not _is_repo_id(text) or text.endswith(".json"):
        raise FileNotFoundError(f"{what} path {text} does not exist (and is not a Hub repository id)")
    return _hub_download(text, filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token,
                         local_files_only=local_files_only, repo_type=repo_type, what=what)


class PretrainedJSON:
    """Mixin: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a value saved as one JSON object.

    Subclasses set :attr:`FILENAME` and :attr:`WHAT` and implement ``to_dict()`` and ``from_dict(data)`` (which must
    check the format and version, e.g. with :func:`mdm_sched._io.check_format`).
    """

    __slots__ = ()
    #: file name inside a folder or a Hub repository
    FILENAME: ClassVar[str]
    #: what the file holds, for messages
    WHAT: ClassVar[str] = "mdm_sched"

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def to_json_string(self) -> str:
        """The saved JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, *, filename: str | None = None) -> Path:
        """Write ``save_directory/FILENAME`` (atomically, creating the folder); returns the file's path.

        Saving into a model's folder ships the value with the model: ``from_pretrained(model_dir)`` reads it back,
        and uploading the folder (or :meth:`push_to_hub`) puts it on the Hub.
        """
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"save_directory {directory} is a file; save_pretrained writes {filename or self.FILENAME} "
                             "into a folder (use save(path) for a single JSON file)")
        path = directory / (filename or self.FILENAME)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_pretrained(cls: type[T], path_or_repo_id: str | os.PathLike, *, subfolder: str | None = None,
                        filename: str | None = None, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        local_files_only: bool = False) -> T:
        """Load from a JSON file, a folder (``path/subfolder/FILENAME``) or a Hub repository id.

        A Hub id is resolved by ``huggingface_hub.hf_hub_download`` (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``; with ``HF_HUB_OFFLINE=1`` only the local cache is used). A file written by a newer
        version of the format raises ``ValueError`` naming the file.
        """
        path = resolve_file(path_or_repo_id, filename or cls.FILENAME, subfolder=subfolder, revision=revision,
                            cache_dir=cache_dir, token=token, local_files_only=local_files_only, what=cls.WHAT)
        data = read_json(path, what=cls.WHAT)
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def push_to_hub(self, repo_id: str, *, subfolder: str | None = None, filename: str | None = None,
                    commit_message: str | None = None, private: bool | None = None, token: str | bool | None = None,
                    revision: str | None = None, create_pr: bool = False) -> Any:
        """Upload the JSON file to ``repo_id`` (created if missing) at ``subfolder/FILENAME``; returns the commit info.

        Uses ``huggingface_hub.HfApi`` (log in with ``hf auth login`` or pass ``token``).
        """
        from huggingface_hub import HfApi

        name = filename or self.FILENAME
        path_in_repo = f"{subfolder.strip('/')}/{name}" if subfolder else name
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        return api.upload_file(path_or_fileobj=self.to_json_string().encode("utf-8"), path_in_repo=path_in_repo,
                               repo_id=repo_id, token=token, revision=revision, create_pr=create_pr,
                               commit_message=commit_message or f"Upload {self.WHAT} {path_in_repo} with mdm_sched")
