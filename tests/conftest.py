"""Test setup: CPU only, with 8 fake devices so sharding tests run anywhere.

XLA_FLAGS must be set before jax is imported anywhere in the process.
"""
import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
