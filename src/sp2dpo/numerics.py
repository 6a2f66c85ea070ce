"""Pinned CPU numerics: the same float bytes on every x86-64 CPU with AVX2, Intel or AMD.

torch picks its CPU kernels by the instruction set it finds: on a CPU with AVX-512 its
vectorised kernels (matmul tails, softmax, norms, reductions) take 16-lane paths whose sums
round differently from the 8-lane AVX2 paths, so the same model gives logits that differ in the
7th-8th significant digit, and every trained adapter, loss and win rate downstream differs with
them. Pinned, the kernels are the AVX2 ones everywhere:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's own vectorised kernels (the one that matters: with it
  alone, SmolLM2's logits and gradients hash the same on an AVX-512 and an AVX2-only machine);
- ``MKL_CBWR=AVX2``: MKL's conditional numerical reproducibility on its AVX2 code path (MKL
  otherwise picks a kernel per CPU model, and a different one on AMD than on Intel);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's ISA cap (its JIT kernels would use AVX-512 where found).

The thread count does not enter: with the pins, SmolLM2's logits, loss and gradients are the
same bytes with 1, 2, 3 and 4 threads (docs/audit.md). Nothing here imports torch; the variables
are read when torch's kernels first run, so they must be set before anything imports torch.
That is why the package root applies them on import (``import sp2dpo`` comes before any torch
import in every entry point: the ``sp2dpo`` command, the DVC stage scripts, the tests), and
child processes (DVC's stages, ``accelerate launch`` workers, a ``transformers serve``) inherit
them through the environment.

The switch: ``SP2DPO_NUMERICS=native`` leaves the environment as it is (torch then uses the
fastest kernels of the CPU; outputs reproduce only on the same CPU kind). ``pinned`` (the
default, also when unset) sets the three variables, overriding values already there.

This module is layer 0 (standard library only), beside the package root.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

#: The switch, read from the environment.
SWITCH = "SP2DPO_NUMERICS"
PINNED, NATIVE = "pinned", "native"
MODES = (PINNED, NATIVE)

#: What the pinned mode sets: every CPU kernel family torch uses, capped at AVX2.
PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def mode(environ: MutableMapping[str, str] | None = None) -> str:
    """The mode the switch selects: ``pinned`` (default, also for an empty value) or ``native``.

    Raises:
        ValueError: any other value, naming the variable and the allowed values.
    """
    env = os.environ if environ is None else environ
    value = env.get(SWITCH, "").strip().lower() or PINNED
    if value not in MODES:
        raise ValueError(f"{SWITCH}={env.get(SWITCH)!r}: expected one of {', '.join(MODES)}")
    return value


def apply(environ: MutableMapping[str, str] | None = None) -> str:
    """Set the pins in ``environ`` (default: this process's environment) unless the switch says
    ``native``; returns the mode applied. An invalid switch value warns and pins (the safe
    side: outputs that reproduce); :func:`mode` raises on it for callers that can report it.
    """
    env = os.environ if environ is None else environ
    try:
        chosen = mode(env)
    except ValueError as exc:
        warnings.warn(f"{exc}; using {PINNED}", stacklevel=2)
        chosen = PINNED
    if chosen == PINNED:
        env.update(PINS)
        if env is os.environ and "torch" in sys.modules:
            _check_torch_capability()
    return chosen


def _check_torch_capability() -> None:
    """torch was imported before the pins were set: warn if its kernels already chose."""
    torch = sys.modules["torch"]
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # a torch without the query, or not fully imported yet
        return
    if capability.upper() not in (PINS["ATEN_CPU_CAPABILITY"].upper(), "DEFAULT"):
        warnings.warn(
            f"torch was imported before sp2dpo and dispatches to {capability} kernels: the "
            f"pinned CPU numerics ({SWITCH}) cannot apply in this process; import sp2dpo first "
            "or export the variables before starting Python",
            stacklevel=3,
        )


def state() -> dict[str, Any]:
    """What governs the CPU numerics of this process, for run logs and MLflow tags: the mode,
    the pinned variables as set, and torch's kernel choice when torch is imported."""
    try:
        chosen = mode()
    except ValueError:
        chosen = PINNED  # what apply() did with it
    out: dict[str, Any] = {"mode": chosen}
    out.update({name: os.environ.get(name) for name in PINS})
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            out["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
            out["threads"] = int(torch.get_num_threads())
        except Exception:
            pass
    return out
