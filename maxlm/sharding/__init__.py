"""Meshes from config, logical-axis rules, and placement of pytrees and batches."""
from maxlm.sharding.mesh import (MESH_AXES, make_mesh, resolve_mesh_shape, logical_shardings,
                                 context_size,
                                 batch_sharding, host_batch_to_global)
