"""The GPT's CPU decode step and prefill compiled ahead of time (AOTInductor), kept on disk.

torch.compile's step pays at every call for Dynamo's guards, the bytecode that gathers the
graph's inputs and AOTAutograd's wrapper around the compiled code: for gpt-char on one core
about 95 of a step's 250 µs. An AOTInductor package is the same inductor-generated C++,
called directly, through its C interface and without the GIL (see AOTDecodeStep). The step
is exported once with the batch size and the attention span as dynamic sizes, so one
package serves every batch and length. The prefill, exported with dynamic batch and prompt
length, is a package of its own: eagerly, one short prompt's prefill was some 150 PyTorch
calls, 2.3 ms for gpt-char on one core, against 0.6 ms compiled, and over HTTP prompts arrive
one or two at a time.

A package holds the model's weights as constants, so it is built for one model: its name is a
hash of the weights, the config, the largest batch and the torch version. Both are built in a
child process (torch.export patches globals that every other model in the server uses while
it traces) and written atomically under the cache folder, where a restart loads them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from models.checkpoint import load_weights, tensors_to_bytes
from models.dataset import cache_root
from models.gpt import GPT, GPTConfig, KVCache

log = logging.getLogger(__name__)

# Engines build, and load, one at a time: an engine that waited for another engine of the same
# model to build then finds the package there, and builds do not share two cores.
BUILDING = threading.Lock()
BUILD_TIMEOUT_S = 900


def cache_over(kv: torch.Tensor) -> KVCache:
    """A KVCache whose tensor is `kv`, which the exported programs write in place."""
    cache = KVCache.__new__(KVCache)
    cache.kv = kv
    return cache


class ExportedDecode(nn.Module):
    """GPT.decode in the form torch.export takes: tensors in, the cache's tensor among them.
    The span travels as the length of `span_positions`, since an exported program's dynamic
    integers are its sizes."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(
        self,
        tokens: torch.Tensor,
        kv: torch.Tensor,
        positions: torch.Tensor,
        span_positions: torch.Tensor,
    ) -> torch.Tensor:
        span = span_positions.size(0)
        return self.model.decode(
            tokens, cache_over(kv), positions, explicit_attention=True, span=span
        )


class ExportedPrefill(nn.Module):
    """GPT.prefill in the form torch.export takes: tensors in, the cache's tensor among them."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return self.model.prefill(idx, cache_over(kv), slots)


# The programs a model's packages hold, each in a file of its own.
PROGRAMS = ("decode", "prefill")


# The package's compiled code is called through its C interface (torch/csrc/inductor/
# aoti_runtime/interface.h) with ctypes, which lets go of the GIL for the call. Tensors cross
# it as AtenTensorHandles, which torch's AOTI bindings make and take back as capsules.
HANDLE = ctypes.c_void_p
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = HANDLE, [ctypes.py_object, ctypes.c_char_p]
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype, _new_capsule.argtypes = ctypes.py_object, [HANDLE, ctypes.c_char_p, HANDLE]


class CompiledProgram:
    """A package's compiled library, called like the module it was exported from, tensors in
    and one tensor out.

    It runs without the GIL: the package's own Python runner holds it for the whole call, so
    the event loop, which streams the last step's tokens to clients, waited for every step to
    end (a Python loop in another thread ran at 0.04 of its speed beside those steps, and at
    1.04 beside these).
    """

    def __init__(self, library: ctypes.CDLL, path: Path, name: str):
        self.library = library
        self.path = path
        self.name = name  # what its errors call it
        self.container = HANDLE()
        self.check(
            library.AOTInductorModelContainerCreateWithDevice(
                ctypes.byref(self.container), ctypes.c_size_t(1), b"cpu", None
            )
        )
        weakref.finalize(self, library.AOTInductorModelContainerDelete, self.container)
        self.run = library.AOTInductorModelContainerRun
        self.run.argtypes = [
            HANDLE,
            ctypes.POINTER(HANDLE),
            ctypes.c_size_t,
            ctypes.POINTER(HANDLE),
            ctypes.c_size_t,
            HANDLE,
            HANDLE,
        ]

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        # New handles onto the tensors, which the call takes over (and frees).
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(list(tensors))
        inputs = (HANDLE * len(handles))(*(_capsule_pointer(h, None) for h in handles))
        outputs = (HANDLE * 1)()
        self.check(self.run(self.container, inputs, len(inputs), outputs, len(outputs), None, None))
        [result] = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(
            [_new_capsule(outputs[0], None, None)]
        )
        return result

    def check(self, status: int) -> None:
        if status != 0:
            message = ctypes.c_char_p()
            self.library.AOTInductorGetLastError(ctypes.byref(message))
            # Its first line; torch's C++ stack trace follows.
            detail = (message.value or b"no message").decode(errors="replace").splitlines()
            raise RuntimeError(f"the compiled {self.name} failed: {detail[0]}")


class AOTDecodeStep:
    """Called like GPT.decode(tokens, cache, positions, span=...), on the cache it was built for."""

    def __init__(self, program: CompiledProgram, block_size: int):
        self.program = program
        # One tensor per span, built once: a step allocates nothing for it.
        self.span_positions = [torch.empty(s, dtype=torch.int8) for s in range(block_size + 1)]

    @property
    def path(self) -> Path:
        return self.program.path

    def __call__(
        self, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor, span: int | None = None
    ) -> torch.Tensor:
        carrier = self.span_positions[span or len(self.span_positions) - 1]
        return self.program(tokens, cache.kv, positions, carrier)


class AOTPrefill:
    """Called like GPT.prefill(idx, cache, slots), on the cache it was built for."""

    def __init__(self, program: CompiledProgram):
        self.program = program

    def __call__(self, idx: torch.Tensor, cache: KVCache, slots: torch.Tensor) -> torch.Tensor:
        return self.program(idx, cache.kv, slots)


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    decode: AOTDecodeStep
    prefill: AOTPrefill


def decode_step_folder() -> Path:
    """Where compiled decode steps are kept: under the cache folder (TINYGPT_CACHE)."""
    return cache_root() / "decode-steps"


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """What a package is built from: the model's weights as safetensors bytes (a tied tensor
    stored once), and what else its code depends on."""

    weights: bytes
    spec: dict[str, Any]  # config, dtype, largest batch

    @classmethod
    def of(cls, model: GPT, capacity: int) -> BuildRequest:
        spec = {
            "config": dataclasses.asdict(model.config),
            "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch."),
            "capacity": capacity,
        }
        return cls(tensors_to_bytes(model.state_dict()), spec)

    def package_name(self, program: str) -> str:
        """The program's name and a hash of the weights, the spec and torch's version."""
        digest = hashlib.sha256(self.weights)
        digest.update(
            json.dumps({**self.spec, "torch": torch.__version__}, sort_keys=True).encode()
        )
        return f"{program}-{digest.hexdigest()[:32]}.pt2"


def export_and_compile(model: GPT, capacity: int, program: str, package_path: Path) -> None:
    """Export the decode step, with dynamic batch and span, or the prefill, with dynamic
    batch and prompt length, and compile it into a package."""
    block_size = model.block_size
    cache = model.new_cache(capacity)
    rows = min(2, capacity)  # an example of 1 would make the batch size a constant 1
    batch = torch.export.Dim("rows", min=1, max=capacity) if capacity > 1 else None
    if program == "decode":
        module: nn.Module = ExportedDecode(model)
        example: tuple[torch.Tensor, ...] = (
            torch.zeros(rows, dtype=torch.long),
            cache.kv,
            torch.zeros(rows, dtype=torch.long),
            torch.empty(block_size, dtype=torch.int8),
        )
        span = torch.export.Dim("span", min=1, max=block_size)
        dynamic: tuple[dict | None, ...] = ({0: batch}, None, {0: batch}, {0: span})
    else:
        module = ExportedPrefill(model)
        example = (torch.zeros(rows, 2, dtype=torch.long), cache.kv, torch.arange(rows))
        length = torch.export.Dim("length", min=1, max=block_size)
        dynamic = ({0: batch, 1: length}, None, {0: batch})
    exported = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    # The weights go into the compiled library itself, which is all `load` takes out.
    torch._inductor.aoti_compile_and_package(
        exported,
        package_path=str(package_path),
        inductor_configs={"aot_inductor.package_constants_in_so": True},
    )


def build(request: BuildRequest, paths: dict[str, Path]) -> None:
    """Build the packages `request` asks for into `paths` (by program), each in a process of
    its own, at once (from an empty cache, the server's first engine was compiled 34 s after
    start-up, against 58 with the two built one after the other). Not in this process:
    torch.export swaps nn.Module.__call__ and other globals while it traces, which would
    break every other model's forward pass in this process (an engine serving, an inspection
    request) for the tens of seconds a build takes."""
    parent = paths[PROGRAMS[0]].parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".building-") as work:
        folder = Path(work)
        (folder / "model.safetensors").write_bytes(request.weights)
        (folder / "request.json").write_text(json.dumps(request.spec))
        builds = [
            subprocess.Popen(
                [sys.executable, "-m", __name__, str(folder), name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in paths
        ]
        failures = []
        deadline = time.monotonic() + BUILD_TIMEOUT_S  # for all of them: they run at once
        for process in builds:
            try:
                _, errors = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                _, errors = process.communicate()
                errors += f"\nno package after {BUILD_TIMEOUT_S} s"
            if process.returncode != 0:
                failures.append((errors.strip().splitlines() or [f"exit {process.returncode}"])[-1])
        if failures:
            raise RuntimeError(f"building the decode step failed: {failures[0]}")
        for name, path in paths.items():  # each whole or not at all: another process may be
            os.replace(folder / f"{name}.pt2", path)  # loading it


def compiled_steps(model: GPT, cache: KVCache, folder: Path) -> CompiledSteps:
    """The compiled decode step and prefill for `model` on `cache`: loaded from `folder` when
    built before, else built there first (tens of seconds). Packages that do not load are
    built anew."""
    request = BuildRequest.of(model, cache.max_slots)
    paths = {name: folder / request.package_name(name) for name in PROGRAMS}
    with BUILDING:
        if all(path.exists() for path in paths.values()):
            try:
                return load(paths, model)
            except Exception as err:
                log.warning(
                    "the compiled steps in %s did not load (%s); building them anew", folder, err
                )
        build(request, paths)
    return load(paths, model)


def load(paths: dict[str, Path], model: GPT) -> CompiledSteps:
    decode = CompiledProgram(load_library(paths["decode"]), paths["decode"], "decode step")
    prefill = CompiledProgram(load_library(paths["prefill"]), paths["prefill"], "prefill")
    return CompiledSteps(AOTDecodeStep(decode, model.block_size), AOTPrefill(prefill))


def load_library(path: Path) -> ctypes.CDLL:
    """A package's compiled library, loaded from a copy taken out of the archive (a package
    is a zip; what else it holds, the generated source, is not needed to run it)."""
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as work:
        libraries = [name for name in archive.namelist() if name.endswith(".so")]
        if len(libraries) != 1:
            raise ValueError(f"{path.name} holds {len(libraries)} compiled libraries, not one")
        # Loaded, the library stays mapped when its file is gone with the folder.
        return ctypes.CDLL(archive.extract(libraries[0], work))


def main() -> None:
    """`python -m service.engine.aot FOLDER PROGRAM`: build the package `build` asked for
    there, FOLDER/PROGRAM.pt2."""
    request, program = Path(sys.argv[1]), sys.argv[2]
    spec = json.loads((request / "request.json").read_text())
    model = GPT(GPTConfig(**spec["config"])).to(getattr(torch, spec["dtype"])).eval()
    load_weights(model, load_safetensors((request / "model.safetensors").read_bytes()))
    export_and_compile(model, spec["capacity"], program, request / f"{program}.pt2")


if __name__ == "__main__":
    main()
