"""Model families: each plugs into the generic tools through `jaxgen.families.base.Family`.

A family module defines `build(config, spec) -> Family`. Adding a family means one model file
(`jaxgen/models/`), one family file here with its entry in `FAMILIES`, and one config.
"""
import collections
import copy
import importlib

from jaxgen import data
from jaxgen.errors import UserError

# family name -> module defining build(config, spec) -> Family (imported on first use)
FAMILIES = {name: f'jaxgen.families.{name}' for name in ('vae', 'gan', 'ddpm', 'ddpm_audio', 'ldm', 'gpt', 'text_vae',
                                                                  'bert', 'autoencoder_kl', 't2i')}


def build(config, spec):
  """The Family of `config.family` for a run whose data spec is `spec`.

  A Family is a pure function of (config, spec), so equal ones get the same Family object (the last few are
  kept): its functions, and with them jax.jit's traces and executables, are reused by every later run, stage,
  sampler or evaluation of that model in this process. It is built on a private copy of the config, which
  later changes to the caller's cannot reach. A family on trained stages (spec.stages) reads and checks their
  checkpoints as it is built, so it is built anew every time."""
  if config.family not in FAMILIES:
    raise UserError(f'unknown family {config.family!r}; choose one of {sorted(FAMILIES)}')
  module = importlib.import_module(FAMILIES[config.family])
  if 'stages' in spec:
    return module.build(config, spec)
  key = (config.to_json_best_effort(sort_keys=True), data.spec_to_json(spec))
  if key not in _BUILT:
    _BUILT[key] = module.build(copy.deepcopy(config), spec)
    while len(_BUILT) > 8:
      _BUILT.popitem(last=False)
  _BUILT.move_to_end(key)
  return _BUILT[key]


_BUILT = collections.OrderedDict()   # (config JSON, spec JSON) -> Family, most recently used last
