"""The pass contract: every graph rewrite checks before, changes, and checks after.

A pass (after onnx_ir's) has a precondition (:meth:`GraphPass.requires`), a change applied to a
copy of the graph (:meth:`GraphPass.change`, returning one line per rewrite), and a
postcondition (:meth:`GraphPass.ensures`); :func:`run_pass` runs the three and returns a
:class:`PassResult` ``(model, modified)``. The caller's model is never changed. The default
checks are the ONNX checker, an unchanged interface (input and output names, element types and
ranks) and working shape inference; a pass adds its own (e.g. "nothing left to fold").

:func:`check_equivalent` runs two models on the same inputs in ONNX Runtime with its own graph
optimizations off (so the runtime's fusions do not hide a broken rewrite) and raises when the
outputs differ beyond a float tolerance: what tests use to prove a pass keeps outputs equal.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import ModelError

__all__ = ["GraphPass", "PassError", "PassResult", "check_equivalent", "run_pass", "run_passes"]

log = logging.getLogger(__name__)


class PassError(ModelError):
    """A pass's precondition or postcondition does not hold."""


@dataclass(frozen=True, kw_only=True)
class PassResult:
    model: Model
    modified: bool
    changes: tuple[str, ...] = ()
    """One line per rewrite, e.g. ``folded BatchNormalization 'bn' into Conv 'conv'``."""


class GraphPass(ABC):
    """One graph rewrite with checks before and after."""

    name: ClassVar[str] = "pass"

    def requires(self, model: Model) -> None:
        """Precondition: a valid ONNX model."""
        check_model(model, f"before {self.name}")

    @abstractmethod
    def change(self, proto: Any) -> list[str]:
        """Rewrite ``proto`` (a private copy) in place; describe each rewrite, or return []."""

    def ensures(self, before: Model, after: Model) -> None:
        """Postcondition: valid, same interface, shapes still infer."""
        check_model(after, f"after {self.name}")
        check_interface(before, after, self.name)

    def __call__(self, model: Model) -> PassResult:
        return run_pass(self, model)


def run_pass(graph_pass: GraphPass, model: Model) -> PassResult:
    graph_pass.requires(model)
    proto = model.copy_proto()
    changes = graph_pass.change(proto)
    if not changes:
        return PassResult(model=model, modified=False)
    after = model.with_proto(proto)
    graph_pass.ensures(model, after)
    for line in changes:
        log.info("%s: %s", graph_pass.name, line)
    return PassResult(model=after, modified=True, changes=tuple(changes))


def run_passes(passes: Iterable[GraphPass], model: Model) -> PassResult:
    """Run passes in order; the result is modified when any of them changed the graph."""
    changes: list[str] = []
    current = model
    for graph_pass in passes:
        result = run_pass(graph_pass, current)
        current = result.model
        changes.extend(result.changes)
    return PassResult(model=current, modified=bool(changes), changes=tuple(changes))


# -- shared checks -----------------------------------------------------------------------------

def check_model(model: Model, when: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model.proto)
        onnx.shape_inference.infer_shapes(model.proto, strict_mode=True)
    except Exception as exc:  # checker and inference raise several error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PassError(f"model {model.name!r} is invalid {when}: {first}; "
                        "report this with the model if a pass produced it") from None


def check_interface(before: Model, after: Model, name: str) -> None:
    def signature(model: Model) -> list[tuple[str, str, int | None]]:
        return [(s.name, str(s.dtype), s.rank) for s in (*model.inputs, *model.outputs)]

    if signature(before) != signature(after):
        raise PassError(f"pass {name!r} changed the model's inputs or outputs: "
                        f"{signature(before)} became {signature(after)}; report this")


def check_equivalent(before: Model, after: Model, feeds: Iterable[Mapping[str, np.ndarray]], *,
                     rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """Largest absolute output difference over ``feeds``; raises PassError beyond tolerance."""
    first, second = _plain_session(before), _plain_session(after)
    worst = 0.0
    for feed in feeds:
        for a, b in zip(first.run(None, dict(feed)), second.run(None, dict(feed)), strict=True):
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                raise PassError(f"outputs of {after.name!r} differ from {before.name!r} by up to "
                                f"{float(np.max(np.abs(a - b))):.3g} (rtol {rtol}, atol {atol})")
    return worst


def _plain_session(model: Model) -> Any:
    """An ONNX Runtime session with graph optimizations off."""
    from edgetune.runtimes.base import SessionOptions
    from edgetune.runtimes.onnxruntime import OnnxRuntimeCPU

    session = OnnxRuntimeCPU().session(model, SessionOptions(threads=1, optimize=False))
    return session.raw
