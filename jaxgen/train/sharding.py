"""One mesh for 1 CPU, 8 GPUs or a TPU pod: batch over 'data', parameters replicated or FSDP-sharded.

Parameters annotated with Flax logical axis names (nn.with_logical_partitioning) are placed by
LOGICAL_AXIS_RULES; unannotated leaves are replicated.
"""
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgen.errors import UserError

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')   # the batch is split over every device, whatever holds the parameters

# logical parameter axis -> mesh axis (None: replicated). FSDP shards the embedding dimension.
LOGICAL_AXIS_RULES = (
    ('embed', 'fsdp'),
    ('vocab', None),
    ('mlp', None),
    ('heads', None),
    ('kv', None),
    ('conv_in', 'fsdp'),
    ('conv_out', None),
)


def make_mesh(mesh_config) -> jax.sharding.Mesh:
  """Mesh of shape (data, fsdp); one axis may be -1 (all remaining devices)."""
  n = jax.device_count()
  sizes = [mesh_config.data, mesh_config.fsdp]
  if sizes.count(-1) > 1:
    raise UserError('at most one of mesh.data, mesh.fsdp may be -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  sizes = [n // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n:
    raise UserError(f'mesh data={sizes[0]} x fsdp={sizes[1]} does not cover the {n} devices; '
                    'set --config.mesh.data=-1')
  # Auto axes: XLA propagates shardings through the family's code (no sharding-in-types annotations needed)
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def state_shardings(abstract_state, mesh):
  """NamedShardings for an (abstract, possibly boxed) state: logical annotations -> mesh axes."""
  logical_specs = nn.get_partition_spec(abstract_state)
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's numpy batch -> global jax arrays sharded over the batch axes."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def check_batch_size(batch_size: int, mesh) -> None:
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % n or batch_size % jax.process_count():
    raise UserError(f'batch_size={batch_size} is not divisible by the {n} devices '
                    f'/ {jax.process_count()} processes; pick a multiple')
