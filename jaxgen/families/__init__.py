"""Model families: each plugs into the generic tools through `jaxgen.families.base.Family`.

A family module defines `build(config, spec) -> Family`. Adding a family means one model file
(`jaxgen/models/`), one family file here with its entry in `FAMILIES`, and one config.
"""
import importlib

from jaxgen.errors import UserError

# family name -> module defining build(config, spec) -> Family (imported on first use)
FAMILIES = {name: f'jaxgen.families.{name}' for name in ('vae', 'gan', 'ddpm', 'ddpm_audio', 'ldm', 'gpt', 'text_vae',
                                                                  'bert')}


def build(config, spec):
  """The Family of `config.family` for a run whose data spec is `spec`."""
  if config.family not in FAMILIES:
    raise UserError(f'unknown family {config.family!r}; choose one of {sorted(FAMILIES)}')
  return importlib.import_module(FAMILIES[config.family]).build(config, spec)
