"""Run one exported graph: the engines a deployed folder can be executed with.

Each loader returns a callable `(*tensors) -> tuple[Tensor, ...]` over CPU (or the
program's device) tensors with the batch first:

- `"torch.export"`: `torch.export.load(file).module()`;
- `"onnxruntime"`: an `onnxruntime.InferenceSession` on the CPU execution provider,
  fed NumPy views of the tensors (no copy) and returning tensors over its outputs;
- `"eager"` / `"compiled"` (no files): the plan's own modules, as they are or through
  `torch.compile(dynamic=True)` (each graph compiles on its own, so the decisions between
  them never break a compiled graph; run them inside `compile_room`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.export.pt2_archive._package import load_pt2

from ..errors import ConfigError
from .graphs import as_tuple
from .pt2_archive import check_pt2_archive

Runner = Callable[..., tuple[Tensor, ...]]
BACKENDS = ("torch.export", "onnxruntime", "eager", "compiled")


def module_runner(module: nn.Module) -> Runner:
    """A callable over `module` that always returns a tuple."""
    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        return as_tuple(module(*tensors))
    return run


def torch_export_runner(path: Path) -> Runner:
    """A `.pt2` program saved by `torch.export.save`, as a callable.

    Raises:
        ConfigError: the archive would unpickle objects (`check_pt2_archive`), or torch
            cannot read it as an exported program.
    """
    check_pt2_archive(path)
    try:  # the archive reader itself: torch.export.load falls back to an older, pickling format
        programs = load_pt2(str(path)).exported_programs
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged archive
        raise ConfigError(f"{path}: torch.export cannot load this program "
                          f"({type(error).__name__}: {error})") from None
    if len(programs) != 1:
        raise ConfigError(f"{path}: expected one exported program, found {len(programs)}")
    return module_runner(next(iter(programs.values())).module())


def onnxruntime_runner(path: Path, *, threads: int | None = None) -> Runner:
    """An ONNX file run by onnxruntime on the CPU.

    Args:
        path: the `.onnx` file.
        threads: intra-op threads (default: `torch.get_num_threads()`, so both engines
            are compared with the same number of threads).

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("backend 'onnxruntime' needs the onnxruntime package: "
                          "pip install 'dynamicnets[deploy]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        feeds = {n: t.detach().contiguous().numpy() for n, t in zip(names, tensors)}
        return tuple(torch.from_numpy(o) for o in session.run(None, feeds))
    return run


def compiled_runner(module: nn.Module) -> Runner:
    """`module` through `torch.compile(dynamic=True)` (a graph of its own, no breaks inside)."""
    return module_runner(torch.compile(module, dynamic=True))


def compile_room(graphs: int):
    """A reusable context in which `torch.compile` may keep a variant of each of `graphs` graphs.

    Dynamo keeps one cache per code object and, past `recompile_limit` (8) variants, runs
    that code eagerly from then on, silently. The pieces of a plan share code objects
    (every residual block of a ResNet is one `BasicBlock.forward`, every early-exit stage
    one `ExitSegment.forward`) and each needs up to two variants per shape (a batch of 1
    is specialised), so a deep model ran most of its pieces uncompiled without this.
    """
    limit = max(int(torch._dynamo.config.recompile_limit), 4 * int(graphs))
    return torch._dynamo.config.patch(recompile_limit=limit)


def file_runner(path: Path, backend: str) -> Runner:
    """The runner of one graph file for `backend` (`"torch.export"` or `"onnxruntime"`)."""
    if backend == "torch.export":
        return torch_export_runner(path)
    if backend == "onnxruntime":
        return onnxruntime_runner(path)
    raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
