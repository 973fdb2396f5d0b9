"""Export a trained workdir for other tools: python -m jaxgen.export --workdir DIR --out OUT [--format ...].

  --format hf (default for GPT runs)   a Hugging Face GPT-2 checkpoint: OUT/model.safetensors, OUT/config.json and
                                       the run's tokenizer (OUT/tokenizer.json for bpe/gpt2 tokenizers;
                                       OUT/jaxgen_tokenizer.json for char/byte, which HF has no equivalent of):
                                       for transformers.GPT2LMHeadModel.from_pretrained(OUT) (jaxgen.hf_gpt2)
  --format safetensors (any family)    OUT/model.safetensors: every parameter of the state (params, EMA, batch
                                       statistics; not the optimizer state) as float32/int arrays under its
                                       '/'-joined path, e.g. 'params/h_0/attn/c_attn/kernel', 'ema_params/...'

The parameters are the checkpoint's as trained (EMA where the run keeps one: --format hf writes the sampling
parameters, state.sampling_params()). OUT may be local or gs://.
"""
import json
import os

import jax
import numpy as np
import safetensors.numpy
from absl import app, flags

from jaxgen import cli, files, hf_gpt2
from jaxgen.errors import UserError

FLAGS = flags.FLAGS
EXCLUDED = ('opt_state', 'step')     # state fields that are not parameters


def flat_parameters(state) -> dict[str, np.ndarray]:
  """The state's leaves outside the optimizer state and step counter, by '/'-joined path, as numpy arrays."""
  def name(key):
    return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state)):
    keys = [name(k) for k in path]
    if keys and keys[0] not in EXCLUDED:
      out['/'.join(keys)] = np.ascontiguousarray(leaf)
  return out


def export_hf(config, spec, state, out: str) -> list[str]:
  """Write a GPT run as a Hugging Face GPT-2 checkpoint into `out`; the paths written."""
  from jaxgen.data import tokenizers
  m = config.model
  tokenizer = tokenizers.from_json(json.loads(spec.tokenizer))
  is_hf = isinstance(tokenizer, tokenizers.HFTokenizer)
  end_of_text = tokenizer.tokenizer.token_to_id(tokenizers.END_OF_TEXT) if is_hf else None
  hf = hf_gpt2.hf_config(vocab_size=spec.vocab_size, block_size=m.block_size, num_layers=m.num_layers,
                         num_heads=m.num_heads, embed_dim=m.embed_dim, dropout=m.dropout, end_of_text=end_of_text)
  paths = hf_gpt2.write_checkpoint(out, hf_gpt2.from_jaxgen(jax.device_get(state.sampling_params()), m.block_size),
                                   hf, tokenizer)
  if not is_hf:
    paths.append(os.path.join(out, 'jaxgen_tokenizer.json'))
    tokenizer.save(paths[-1])
  return paths


def export_workdir(workdir: str, out: str, fmt: str | None = None, step: int | None = None) -> list[str]:
  """Export the workdir's checkpoint (latest, or `step`) into `out` as `fmt` ('hf' or 'safetensors'; default hf
  for GPT runs, safetensors otherwise); the paths written."""
  import jaxgen
  config, _, state = jaxgen.load_state(workdir, step)
  is_gpt = config.family == 'gpt'
  fmt = fmt or ('hf' if is_gpt else 'safetensors')
  if fmt == 'hf':
    if not is_gpt:
      raise UserError(f'{workdir} holds a {config.family} run: only GPT runs export as Hugging Face GPT-2; use '
                      '--format safetensors')
    from jaxgen.train import checkpointing
    return export_hf(config, checkpointing.load_spec(workdir), state, out)
  path = os.path.join(out, 'model.safetensors')
  metadata = {'format': 'jaxgen', 'family': config.family, 'config': config.to_json_best_effort()}
  files.write_atomic(path, safetensors.numpy.save(flat_parameters(state), metadata=metadata))
  return [path]


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'a workdir written by train.py')
  flags.DEFINE_string('out', None, 'output folder (local or gs://)')
  flags.DEFINE_enum('format', None, ['hf', 'safetensors'], 'hf: Hugging Face GPT-2 checkpoint (GPT runs; the default '
                    'for them); safetensors: every parameter under its path (any family; the default otherwise)')
  flags.DEFINE_integer('checkpoint_step', None, 'checkpoint to export (default: latest)')
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for path in export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.format, FLAGS.checkpoint_step):
    print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
