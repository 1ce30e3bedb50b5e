"""Moved: the training driver is the composition root `maxlm.run.pretrain`.

Kept so `from maxlm.train.driver import train` (notebooks, scripts) still
works. Not part of the `maxlm.train` library: nothing in maxlm imports it.
"""
from maxlm import data as data_lib  # noqa: F401  (tests patch driver.data_lib)
from maxlm.run.pretrain import train  # noqa: F401
