"""Where figures came from: recorded with every result file."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> dict:
    import ray
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")], "python": platform.python_version(),
            "ray": ray.__version__, "tensorflow": tf.__version__, "os": platform.platform()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
