"""Tests for `sp2dpo.numerics`: the pins, the switch, that importing sp2dpo applies them before
torch picks its kernels, and (slow) that both packaged models' logits hash to the reference bytes
recorded on an AVX2-only machine (`sp2dpo numerics --fingerprint`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sp2dpo import numerics
from sp2dpo.llm import models
from tests.conftest import ROOT, run, tool_env

SP2DPO = str(Path(sys.executable).parent / "sp2dpo")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


X86_AVX2 = platform.machine() in ("x86_64", "AMD64") and "avx2" in _cpu_flags()
needs_avx2 = pytest.mark.skipif(not X86_AVX2, reason="the pins are for x86-64 CPUs with AVX2")


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the pins (the suite imported sp2dpo, which set them)."""
    env = {k: v for k, v in tool_env().items() if k not in numerics.PINS and k != numerics.SWITCH}
    return {**env, **extra}


def test_apply_sets_the_pins_and_native_leaves_the_environment():
    env = {"MKL_CBWR": "AUTO", "OTHER": "x"}
    assert numerics.apply(env) == numerics.PINNED
    assert env == {**numerics.PINS, "OTHER": "x"}  # a value already there is overridden
    env = {numerics.SWITCH: "native", "MKL_CBWR": "AUTO"}
    assert numerics.apply(env) == numerics.NATIVE
    assert env == {numerics.SWITCH: "native", "MKL_CBWR": "AUTO"}
    assert numerics.apply({numerics.SWITCH: " Pinned "}) == numerics.PINNED
    assert numerics.mode({numerics.SWITCH: ""}) == numerics.PINNED


def test_an_invalid_switch_is_refused_by_mode_and_pins_on_import():
    with pytest.raises(ValueError, match=r"SP2DPO_NUMERICS='fast': expected one of pinned, native"):
        numerics.mode({numerics.SWITCH: "fast"})
    env = {numerics.SWITCH: "fast"}
    with pytest.warns(UserWarning, match="using pinned"):
        assert numerics.apply(env) == numerics.PINNED
    assert all(env[k] == v for k, v in numerics.PINS.items())
    proc = run([SP2DPO, "numerics"], cwd=ROOT, env=_clean_env(SP2DPO_NUMERICS="fast"), check=False)
    assert proc.returncode == 2
    assert "sp2dpo: error: SP2DPO_NUMERICS='fast': expected one of pinned, native" in proc.stderr


PROBE = (
    "import sys, os; import {first}; import torch; "
    "print(torch.backends.cpu.get_cpu_capability(), os.environ.get('MKL_CBWR'))"
)


@needs_avx2
def test_importing_sp2dpo_pins_torch_and_the_switch_turns_it_off():
    pinned = run([sys.executable, "-c", PROBE.format(first="sp2dpo")], cwd=ROOT, env=_clean_env()).stdout.split()
    assert pinned == ["AVX2", "AVX2"]
    native = run([sys.executable, "-c", PROBE.format(first="sp2dpo")], cwd=ROOT,
                 env=_clean_env(SP2DPO_NUMERICS="native")).stdout.split()
    assert native[1] == "None"
    if "avx512f" in _cpu_flags():  # where the CPU offers more, native takes it
        assert native[0] == "AVX512"
    # A child process (a DVC stage, a server) inherits the pins without importing sp2dpo.
    child = "import subprocess, sys; import sp2dpo; subprocess.run([sys.executable, '-c', {probe!r}])"
    out = run([sys.executable, "-c", child.format(probe=PROBE.format(first="os"))], cwd=ROOT, env=_clean_env()).stdout
    assert out.split() == ["AVX2", "AVX2"]


@needs_avx2
def test_torch_imported_first_gets_a_warning():
    code = "import warnings; warnings.simplefilter('always'); import torch; torch.zeros(2).sum(); import sp2dpo"
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    if "avx512f" in _cpu_flags():
        assert "torch was imported before sp2dpo and dispatches to AVX512 kernels" in proc.stderr


@needs_avx2
@pytest.mark.slow
def test_packaged_models_fingerprints_match_the_avx2_reference():
    """The pinned logits of both packaged models are the bytes an AMD EPYC with AVX2 only gave
    (torch 2.13.0 CPU); unpinned, a CPU with AVX-512 gives other bytes."""
    proc = run([SP2DPO, "numerics", "--fingerprint"], cwd=ROOT, env=_clean_env(), timeout=900)
    result = json.loads(proc.stdout)
    assert result["state"]["mode"] == "pinned" and result["state"]["cpu_capability"] == "AVX2"
    for name, reference in models.PINNED_FINGERPRINTS.items():
        found = result["fingerprints"][name]
        assert found["sha256"] == reference, (name, found)
        assert found["matches"] is True
    assert os.path.basename(models.resolve("local:gemma3-270m")) == "gemma3-270m"
    if "avx512f" in _cpu_flags():
        proc = run([SP2DPO, "numerics", "--fingerprint"], cwd=ROOT, env=_clean_env(SP2DPO_NUMERICS="native"),
                   timeout=900, check=False)
        assert proc.returncode == 1, proc.stderr
        native = json.loads(proc.stdout)
        assert native["state"]["cpu_capability"] == "AVX512"
        assert not any(f["matches"] for f in native["fingerprints"].values())
