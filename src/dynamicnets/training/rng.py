"""Random-number state: seeding, and capture/restore in checkpoint-safe form.

Everything captured is a tensor, list, int, float or None, so a checkpoint holding it
loads with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers such as `(seed, epoch, rank)`."""
    words = np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def loader_generators(loader) -> dict[str, torch.Generator]:
    """The seeded `torch.Generator`s a DataLoader shuffles and seeds workers with, by name."""
    found: dict[str, torch.Generator] = {}
    candidates = {
        "loader": getattr(loader, "generator", None),
        "sampler": getattr(getattr(loader, "sampler", None), "generator", None),
        "batch_sampler.sampler": getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    }
    seen: set[int] = set()
    for name, gen in candidates.items():
        if isinstance(gen, torch.Generator) and id(gen) not in seen:
            seen.add(id(gen))
            found[name] = gen
    return found


def capture_rng_state(loader=None) -> dict[str, Any]:
    """Snapshot of every random stream training draws from.

    Returns:
        dict with `torch` (uint8 tensor), `cuda` (list of uint8 tensors, empty without
        CUDA), `numpy` (dict: `keys` int64 `(624,)` tensor, `pos`, `has_gauss`,
        `cached_gaussian`), `python` (dict: `version`, `state` list of ints, `gauss_next`)
        and `loader` (generator name -> uint8 state tensor).
    """
    np_name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss_next": gauss_next},
        "loader": {} if loader is None else {k: g.get_state() for k, g in loader_generators(loader).items()},
    }


def restore_rng_state(state: dict[str, Any], loader=None) -> None:
    """Put back a snapshot of `capture_rng_state` (streams absent from it are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"])
        )
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss_next"]))
    if loader is not None:
        gens = loader_generators(loader)
        for name, gen_state in state.get("loader", {}).items():
            if name in gens:
                gens[name].set_state(gen_state.cpu())
