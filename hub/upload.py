"""One-commit uploads of a prepared folder to the Hub (or any server speaking its API, given `endpoint`)."""

from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError


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


def describe_hub_failure(error: BaseException, endpoint: str | None, repo_id: str) -> str | None:
    """One line for an upload the Hub refused or could not be reached for; None for anything else (a bug).
    huggingface_hub's errors derive from its HTTP client's `HTTPError`: `HfHubHTTPError` carries the response."""
    where = endpoint or constants.ENDPOINT
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401:
            return (
                f"the Hub at {where} refused the token (401 Unauthorized): pass a valid --token, set HF_TOKEN, or run "
                "`hf auth login`."
            )
        if status == 403:
            return f"the token may not write to {repo_id} (403 Forbidden): use a token with write access to it."
        reason = (error.server_message or str(error)).strip().splitlines()[0]
        return f"the Hub at {where} answered {status} for {repo_id}: {reason}"
    if isinstance(error, HTTPError):  # no answer at all: connection refused, unknown host, timeout
        return (
            f"cannot reach the Hub at {where} ({type(error).__name__}: {str(error).splitlines()[0]}): check "
            "--endpoint / HF_ENDPOINT and the network."
        )
    return None
