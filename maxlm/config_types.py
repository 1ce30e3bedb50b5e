"""Typed sub-configs: `config.<section>` read once into a frozen dataclass.

`typed(cls, cfg, section)` turns an ml_collections ConfigDict, a dict (a
run's config.json) or an instance into `cls`. A field the dataclass does not
know, or a required field that is missing, is one line naming
`<section>.<field>` (a `UsageError`: exit status 2, nothing ran), raised when
the composition root reads the config, before anything compiles, instead of
a `.get(name, default)` deep in the code quietly picking a default. Nested
dataclass fields (optim.schedule) are converted too. Standard library only.

`ModelConfig.from_any` (maxlm/model/config.py) is the model's own version of
the same idea; the sections typed here are train and init
(maxlm/train/config.py), ckpt (maxlm/checkpoint/config.py), optim
(maxlm/optim/config.py) and mesh (maxlm/sharding/config.py).
"""

from __future__ import annotations

import dataclasses
import typing

from maxlm.cli import UsageError


def typed(cls, cfg, section: str):
  """`cls(**cfg)` with errors naming `section.field`; nested dataclass fields converted."""
  if isinstance(cfg, cls):
    return cfg
  if cfg is None:
    cfg = {}
  raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise UsageError(f"{section}.{unknown[0]} is not a field of {section} (fields:"
                     f" {', '.join(fields)})")
  missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING]
  if missing:
    raise UsageError(f"{section}.{missing[0]} is missing (required by {cls.__name__})")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in raw.items():
    hint = hints.get(name)
    if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
      value = typed(hint, value, f"{section}.{name}")
    kwargs[name] = value
  return cls(**kwargs)
