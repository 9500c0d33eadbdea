"""The reweighting step's work after the all-gather as one compiled region (TorchInductor), with an eager fallback.

:func:`~reweigh.algorithms.step.weigh_global_batch` is a pure function of a few batch-sized vectors. Run eagerly it
dispatches about seventy small operators per microbatch, each a kernel launch on a GPU, and the host time of those
launches is most of what reweighting costs next to plain training. :class:`Fused` traces it once per setting and
input layout into an ATen graph (``make_fx``) and compiles that with TorchInductor: one fused kernel on a CPU, a few
on a GPU. It then calls the compiled graph directly: ``torch.compile``'s frame evaluation, guards and wrappers cost
more host time than the kernel (measured in ``BENCHMARKS.md``), and the settings a graph depends on are few and
known, so :class:`Fused` keys its graphs by them itself. On a CPU the graph's wrapper (which allocates its outputs
and scratch values and calls the kernel) is generated in C++ as well (Inductor's ``cpp_wrapper``), which takes a
third less host time per call than its Python form; like every C++ wrapper Inductor makes, it lets other Python
threads run during the call (it releases the GIL).

Compiling costs seconds once per process and setting (on a CPU, TorchInductor also probes the CPU's vector
instructions, about 6 s with torch 2.7), which is why ``fused='auto'`` compiles on CUDA only; see ``docs/scale.md``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Hashable
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ['FUSED_CHOICES', 'MAX_GRAPHS', 'Fused', 'resolve_fused']

log = logging.getLogger(__name__)

FUSED_CHOICES = ('auto', True, False)
"""What ``fused`` takes: ``'auto'`` (compile on CUDA, eager elsewhere), ``True`` (compile), ``False`` (eager)."""
MAX_GRAPHS = 16
"""Compiled graphs :class:`Fused` keeps; a setting or input layout beyond them runs eagerly (one note says so)."""


def resolve_fused(fused: bool | Literal['auto'], device: torch.device | str) -> bool:
    """Whether to compile the step on ``device``.

    Raises:
        ValueError: If ``fused`` is not one of :data:`FUSED_CHOICES`.

    Example:
        >>> from reweigh.algorithms.fused import resolve_fused
        >>> resolve_fused('auto', 'cpu'), resolve_fused('auto', 'cuda:0'), resolve_fused(True, 'cpu')
        (False, True, True)
    """
    if isinstance(fused, bool):
        return fused
    if fused == 'auto':
        return torch.device(device).type == 'cuda'
    raise ValueError(f"fused must be 'auto', true or false, got {fused!r}.")


class Fused:
    """``fn(*tensors, **settings)`` compiled once per ``settings`` and tensor layout, called without a framework between.

    ``fn`` must be pure (tensors in, a tuple of tensors or ``None`` out) and its Python control flow may depend on
    ``settings`` only, never on tensor values; ``settings`` must be hashable. A graph is traced with fake tensors, so a
    function that reads a tensor's value (``.item()``, ``if t.max() > 0:``) cannot be traced: it then runs eagerly for
    that setting, after one warning, as it does where compiling fails (no C++ compiler, no Triton). The eager call
    gives the result of the compiled one up to float rounding. Under a ``TorchDispatchMode`` (a FLOP counter, the
    no-sync test's detector) ``fn`` runs eagerly, op by op, for the mode to see.

    Example:
        >>> import torch
        >>> from reweigh.algorithms.fused import Fused
        >>> scale = Fused(lambda x, *, by: (x * by,))
        >>> scale(torch.ones(2), by=3.0)[0].tolist()
        [3.0, 3.0]
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.graphs: dict[Hashable, Callable[[list[torch.Tensor]], Any] | None] = {}
        """The compiled graph of each key (settings and input layouts); ``None`` for one that runs eagerly."""
        self._full_noted = False

    def __call__(self, *tensors: torch.Tensor, **settings: Hashable) -> Any:
        if is_in_torch_dispatch_mode(include_infra_modes=False):
            return self.fn(*tensors, **settings)
        key = (tuple([(t.shape, t.stride(), t.dtype, t.device) for t in tensors]), tuple(settings.items()))
        graph = self.graphs.get(key, self)  # self: not compiled yet
        if graph is self:
            graph = self._compile(key, tensors, settings)
        if graph is None:
            return self.fn(*tensors, **settings)
        return graph(list(tensors))

    def trace(self, *tensors: torch.Tensor, **settings: Hashable) -> torch.fx.GraphModule:
        """The ATen graph of ``fn(*tensors, **settings)`` that :class:`Fused` compiles, traced with fake tensors.

        Raises:
            RuntimeError: If ``fn`` reads a tensor's value (``GuardOnDataDependentSymNode``), among others.
        """
        from torch._inductor.decomposition import select_decomp_table
        from torch.fx.experimental.proxy_tensor import make_fx

        return make_fx(lambda *ts: self.fn(*ts, **settings), decomposition_table=select_decomp_table(),
                       tracing_mode='fake')(*tensors)

    def _compile(self, key: Hashable, tensors: tuple[torch.Tensor, ...], settings: dict[str, Hashable]) -> Any:
        if len(self.graphs) >= MAX_GRAPHS:
            if not self._full_noted:
                log.warning('reweigh: %d compiled reweighting steps kept; new settings or batch shapes run eagerly.',
                            MAX_GRAPHS)
                self._full_noted = True
            return None
        from torch._inductor import config
        from torch._inductor.compile_fx import compile_fx_inner

        try:
            # on a CPU, the graph's wrapper in C++ too (the module's docstring)
            on_cpu = all(t.device.type == 'cpu' for t in tensors)
            with config.patch(_cpu_options() if on_cpu else {}):
                compiled = compile_fx_inner(self.trace(*tensors, **settings), list(tensors), cpp_wrapper=on_cpu)
            # its generated function itself: the object around it also does compile-time bookkeeping at every call
            graph = getattr(compiled, 'current_callable', None) or compiled
            graph = _entry_of(graph) if on_cpu else graph
        except Exception as e:  # untraceable (reads a value), or no compiler: the eager function is the same rule
            reason = (str(e).strip().splitlines() or [''])[0]
            log.warning('reweigh: could not compile the reweighting step (%s: %s); it runs eagerly for these settings, '
                        'which costs host time per microbatch (docs/scale.md).', type(e).__name__, reason)
            graph = None
        self.graphs[key] = graph
        return graph


def _cpu_options() -> dict[str, Any]:
    """Inductor settings for a graph on a CPU: a concatenation (``torch.stack`` of results) computed in the fused
    kernel, where Inductor's CPU default writes each part into a view of its own, a tensor made and freed per call."""
    from torch._inductor import config

    return {'force_pointwise_cat': True} if hasattr(config, 'force_pointwise_cat') else {}


def _entry_of(graph: Callable[[list[torch.Tensor]], Any]) -> Callable[[list[torch.Tensor]], Any]:
    """A C++ wrapper's entry point, called without the Python function Inductor generates around it.

    That function loops over the inputs to admit non-tensor ones, which this step never passes. Skipping it takes
    about 15 us off each call right after a forward pass (torch 2.7 and 2.15). Where the generated module does not
    have the layout this expects, ``graph`` is returned as it is.
    """
    entry = getattr(sys.modules.get(getattr(graph, '__module__', '')), 'inductor_entry', None)
    aoti = getattr(torch._C, '_aoti', None)
    if entry is None or aoti is None:
        return graph
    to_handles, from_handles = aoti.unsafe_alloc_void_ptrs_from_tensors, aoti.alloc_tensors_by_stealing_from_void_ptrs
    return lambda tensors: from_handles(entry(to_handles(tensors)))
