"""jaxgen's own file I/O on local or cloud paths (gs://..., through etils.epath), and Hugging Face Hub snapshots.

Workdirs and data dirs may be URLs that epath opens (gs:// with gcsfs or TensorFlow's gfile installed). Orbax,
TFDS and the TensorBoard writer take such paths themselves; everything else jaxgen writes (config.json,
spec.json, metrics.jsonl, samples, tokenizers, token arrays) goes through these functions, which the tests run
on local paths. What a cloud store cannot do: memory-map (token windows are read with seek + read instead),
append (metrics.jsonl is rewritten whole) and hold an fcntl lock (jaxgen.train.lock skips it, with a warning).
"""
import os
import re

from etils import epath

from jaxgen.errors import UserError


def is_local(path) -> bool:
  """Whether `path` is on the local file system (no URL scheme such as gs://)."""
  return '://' not in os.fspath(path)


def absolute(path) -> str:
  """os.path.abspath for local paths; URLs (gs://bucket/dir) are already absolute and stay as they are."""
  path = os.fspath(path)
  return os.path.abspath(path) if is_local(path) else path.rstrip('/')


def exists(path) -> bool:
  return epath.Path(path).exists()


def is_file(path) -> bool:
  return epath.Path(path).is_file()


def read_text(path) -> str:
  return epath.Path(path).read_text(encoding='utf-8')


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def write_atomic(path, content: str | bytes) -> None:
  """Write `content` to path through a temporary file renamed into place, so readers never see half a file
  (processes sharing a workdir write identical content: the last rename wins cleanly)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.tmp{os.getpid()}')
  if isinstance(content, str):
    tmp.write_text(content, encoding='utf-8')
  else:
    tmp.write_bytes(content)
  tmp.replace(path)


def hub_snapshot(name: str, patterns: list[str]) -> str:
  """A local directory with the files of `name`: the directory itself if it is one (local or gs://), else the
  Hugging Face Hub repository `name` (e.g. 'gpt2', 'openai-community/gpt2-medium'), downloaded once into the
  Hub cache (HF_HOME; offline, HF_HUB_OFFLINE=1 uses that cache) with only the files matching `patterns`."""
  if epath.Path(name).is_dir():
    return os.fspath(name)
  if not re.fullmatch(r'[\w-][\w.-]*(/[\w-][\w.-]*)?', name):
    raise UserError(f'{name} is neither a directory nor a Hugging Face Hub name (such as gpt2 or org/name)')
  import huggingface_hub
  try:
    return huggingface_hub.snapshot_download(repo_id=name, allow_patterns=patterns)
  except Exception as e:  # noqa: BLE001 -- network, authentication, unknown repository: fixed the same way
    message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'{name} is not a directory, and downloading it from the Hugging Face Hub failed '
                    f'({type(e).__name__}: {message}); offline? give a local directory holding its files') from e
