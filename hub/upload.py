"""One-commit uploads of a prepared folder to the Hub (or any server speaking its API, given `endpoint`)."""

from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, get_token


def resolve_token(token: str | None) -> str:
    """The token given, else HF_TOKEN or the stored `hf auth login`; a clear error when there is none."""
    token = token or get_token()
    if not token:
        raise PermissionError("No Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token.")
    return token


def upload_in_one_commit(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload AltCLIP model",
    endpoint: str | None = None,
    space_sdk: str | None = None,
) -> CommitInfo:
    """Creates the repository (and branch) if needed, then uploads every file of `folder` in a single commit."""
    api = HfApi(endpoint=endpoint, token=resolve_token(token))
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
    )
