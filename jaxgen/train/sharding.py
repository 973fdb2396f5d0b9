"""One mesh for 1 CPU, 8 GPUs or a TPU pod: batch over every device, parameters replicated or FSDP-sharded.

The mesh has axes (data, fsdp). Batches are split over both (each device gets batch_size / n_devices
examples). Parameters, optimizer state and EMA are replicated over 'data' and sharded over 'fsdp' (fully
sharded data parallelism: XLA all-gathers a weight where it is used and reduce-scatters its gradient), so
mesh.fsdp = 1 is plain data parallelism. Which dimension of a leaf goes over 'fsdp':
  - leaves annotated with Flax logical axis names (nn.with_logical_partitioning, e.g. GPT) follow
    LOGICAL_AXIS_RULES;
  - unannotated leaves (e.g. the UNet's) of at least FSDP_MIN_SIZE elements: their largest dimension that
    the fsdp size divides; smaller ones are replicated.
A dimension the mesh axes do not divide evenly is never sharded.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgen.errors import UserError

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')   # the batch is split over every device, whatever holds the parameters

# logical parameter axis -> mesh axis (None: replicated). Every GPT weight has an 'embed' dimension.
LOGICAL_AXIS_RULES = (
    ('embed', 'fsdp'),
    ('vocab', None),
    ('mlp', None),
    ('heads', None),
    ('kv', None),
    ('layers', None),      # scan_layers' stacked blocks: every device holds every layer's shard
)
FSDP_MIN_SIZE = 2**14   # elements; gathering a smaller unannotated leaf costs more time than it saves memory


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Mesh of shape (data, fsdp) over `devices` (default: all, of every process); one size may be -1."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  sizes = [mesh_config.data, mesh_config.fsdp]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserError(f'mesh data={sizes[0]} fsdp={sizes[1]}: sizes must be positive, and at most one -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  sizes = [n // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n:
    raise UserError(f'mesh data={sizes[0]} x fsdp={sizes[1]} does not cover the {n} devices; '
                    'set --config.mesh.data=-1')
  # Auto axes: XLA propagates shardings through the family's code (no sharding-in-types annotations needed)
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Unannotated leaf: its largest dimension divisible by `fsdp` over 'fsdp' if it is big enough."""
  if fsdp == 1 or int(np.prod(shape)) < FSDP_MIN_SIZE:
    return P()
  dims = [d for d in np.argsort(shape, kind='stable')[::-1] if shape[d] % fsdp == 0]
  return P(*('fsdp' if d == dims[0] else None for d in range(len(shape)))) if dims else P()


def _divisible(spec: P, shape: tuple[int, ...], mesh) -> P:
  """`spec` with the dimensions that its mesh axes do not divide evenly left unsharded."""
  def size(axes):
    return int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
  return P(*(axes if axes is not None and dim % size(axes) == 0 else None for axes, dim in zip(spec, shape)))


def state_shardings(abstract_state, mesh):
  """NamedShardings on `mesh` for an (abstract, possibly nn.Partitioned-boxed) state."""
  def sharding(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      spec, shape = nn.logical_to_mesh_axes(leaf.names, LOGICAL_AXIS_RULES), leaf.value.shape
    elif isinstance(leaf, nn.Partitioned):
      spec, shape = P(*leaf.names), leaf.value.shape
    else:
      spec, shape = fsdp_spec(leaf.shape, mesh.shape['fsdp']), leaf.shape
    return NamedSharding(mesh, _divisible(spec, shape, mesh))
  return jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's numpy batch -> global jax arrays sharded over the batch axes.

  Process p's rows land on its own devices: the global batch is the concatenation of the local ones.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def check_batch_size(batch_size: int, mesh) -> None:
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % n or batch_size % jax.process_count():
    raise UserError(f'batch_size={batch_size} is not divisible by the {n} devices '
                    f'/ {jax.process_count()} processes; pick a multiple')
