"""The reweighting training path never waits for the device: no host synchronisation in reweigh's code.

Real Composer training (``LossReweighting`` past its warm-up, ``LossHistory`` writing Parquet, two
microbatches per batch; one process, and two gloo CPU ranks) runs under :class:`SyncDetector`, a
``TorchDispatchMode`` that records every op which, on an accelerator, makes the host wait for the
device: ``aten._local_scalar_dense`` (what ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)`` and
``if t:`` become), ``aten.nonzero`` (also behind ``torch.where(mask)`` and ``argwhere``),
``aten.masked_select``, boolean-mask indexing (``aten.index``/``aten.index_put_`` with a bool index),
``aten.repeat_interleave`` with tensor repeats and no ``output_size``, ``aten._unique*``/``unique_*``,
``aten.equal``, ``aten.bincount``, and device-to-host ``aten._to_copy``/``aten.copy_`` (blocking). On
CPU in torch 2.7 ``Tensor.tolist()``, ``Tensor.numpy()`` (so ``np.asarray(t)``) and ``Tensor.cpu()``
dispatch no aten op at all (they read the CPU storage directly; on CUDA they go through ``_to_copy``),
so the detector also wraps those three methods while it is armed.

The window. A Composer callback (:class:`SyncWindow`, the last callback, so it runs after every
algorithm and after ``LossHistory`` at each event; Composer runs algorithms before callbacks at every
event except ``INIT``, and ``AFTER_*`` algorithms in reverse order) opens the window at
``Event.AFTER_FORWARD`` and closes it at ``Event.BATCH_END``. It therefore covers, per microbatch, the
model's ``loss()``, ``AFTER_LOSS`` (``LossReweighting``'s gather, weights and reweighted loss, then
``LossHistory.after_loss``) and backward, then Composer's optimizer step (whose closure runs the
microbatches), its batch bookkeeping, and all ``BATCH_END`` work of ``LossReweighting`` (``_log_batch``
up to ``DeferredMetrics.push``) and ``LossHistory``. It is paused at ``BEFORE_FORWARD`` of the next
microbatch. Since ``ReweighCausalLM(loss_impl='chunked')`` computes the token losses inside the forward
pass (from the hidden states, at the LM head), the training tests also run with a ``with-forward`` window that
opens at ``BEFORE_FORWARD`` instead and stays open over the forward passes; both loss implementations
(``'chunked'``, ``'materialized'``) are covered.

One exception inside the window: on CPU ``DeferredMetrics`` logs a step's metrics at once with
``values.tolist()``; that is its CPU path by design (on CUDA ``push`` only starts an asynchronous copy
into pinned memory and the values are read one step later), so the detector is paused inside
``DeferredMetrics.flush`` when the pending values are not on CUDA. Everything ``push`` does before that
(stacking the metric tensors) is checked.

The scope. Composer syncs in that window itself, every batch, and reweigh cannot avoid it (see
:data:`COMPOSER_SYNCS`; :func:`test_window_reaches_past_the_optimizer_step_and_composers_own_syncs_are_known`
pins that list, which also proves the window stays open until after the optimizer step). So an op fails
the test only if the innermost Python frame that issued it, looking past torch and ``composer.utils``
(helpers reweigh calls, such as ``dist.all_gather``), is code this project plugs into Composer: the
installed reweigh package (an editable install of ``algorithms/`` and ``pipeline/`` of this checkout)
or this test module (where the controls live). That attributes a sync inside a custom autograd
``backward`` or the LM head to reweigh, while Composer's trainer and the Hugging Face model code are
not blamed for reweigh, nor reweigh for them. Scoping rather than shrinking the window keeps the
optimizer step and Composer's own code inside the window.

The controls prove the detector can fail: a tiny algorithm that calls ``state.loss.item()``,
``.tolist()``, boolean-mask indexing or ``torch.where(mask)`` at ``AFTER_LOSS``/``BEFORE_BACKWARD``, or
``LossReweighting.nonfinite_total`` at ``BATCH_END``, is caught with its line; a forward hook on the LM
head that calls ``.item()`` is caught with the ``with-forward`` window only. (Planting such a sync in
``weights.py``, ``history.py``, ``loss_reweighting.py`` or ``linear_ce.py`` makes the main test fail.)
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import composer
import pytest
import torch
import torch.multiprocessing as mp
from composer.core import Algorithm, Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist
from lm_helpers import TokenDataset, free_port, make_trainer, set_rank_env, tiny_gpt2
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

import reweigh.algorithms
import reweigh.pipeline
from reweigh.algorithms import LossReweighting
from reweigh.algorithms.deferred_metrics import DeferredMetrics
from reweigh.callbacks import LossHistory

PROJECT = Path(__file__).resolve().parents[1]
SCOPE = (
    Path(reweigh.algorithms.__file__).resolve().parent,
    Path(reweigh.pipeline.__file__).resolve().parent,
    Path(__file__).resolve(),
)
"""Code this project plugs into Composer: a sync issued from it fails the test."""
COMPOSER_DIR = Path(composer.__file__).resolve().parent
TORCH_DIR = Path(torch.__file__).resolve().parent
HELPERS = (TORCH_DIR, COMPOSER_DIR / 'utils')
"""Library code that reweigh calls: a sync inside it belongs to the nearest caller outside it."""
COMPOSER_SYNCS = {
    (op, 'composer/trainer/trainer.py', function) for op in ('aten._local_scalar_dense', 'Tensor.cpu')
    for function in ('_train_loop', '_accumulate_time_across_ranks')
} | {('aten._local_scalar_dense', 'composer/trainer/trainer.py', '_train_batch')}
"""What Composer 0.32.1 itself syncs in the window, as ``(op, file, enclosing function)``, every batch:
``.item()`` of the batch loss returned by the optimizer-step closure (``_train_batch``), ``loss.cpu().item()``
of the all-reduced loss for logging (``_train_loop``), and ``.cpu().item()`` of the all-reduced sample and
token counts and of the broadcast batch time (``_accumulate_time_across_ranks``)."""

ALGORITHM = dict(strategy='linupper', r=0.7, warmup='1ba')
ALWAYS_SYNC = {
    '_local_scalar_dense', 'nonzero', 'nonzero_numpy', 'masked_select', 'equal', 'bincount',
    '_unique', '_unique2', 'unique_dim', 'unique_consecutive', 'unique_dim_consecutive',
}
BOOL_INDEX = {'index', 'index_put', 'index_put_', '_index_put_impl', '_index_put_impl_'}
HOOKED_METHODS = ('tolist', 'numpy', 'cpu')


@dataclass(frozen=True)
class Sync:
    """One op that makes the host wait for the device."""
    op: str
    site: str
    """Innermost frame outside torch, ``file:line in function`` (file relative to the project or site-packages)."""
    owner: str
    """``file in function`` of the innermost named function outside torch (skipping lambdas and comprehensions)."""
    stack: tuple[str, ...]
    """Frames in this project (not the venv) or in :data:`SCOPE`, outermost first."""
    plugin: bool
    """Whether the innermost frame outside :data:`HELPERS` is in :data:`SCOPE`."""

    def describe(self) -> str:
        return '\n'.join([f'{self.op} at {self.site}', *(f'    {line}' for line in self.stack)])


def _file(frame: traceback.FrameSummary) -> str:
    path = Path(frame.filename)
    for root in (PROJECT, COMPOSER_DIR.parent, TORCH_DIR.parent):
        if path.is_relative_to(root) and (root != PROJECT or _in_project(frame)):
            return str(path.relative_to(root))
    return str(path)


def _in_venv(frame: traceback.FrameSummary) -> bool:
    return Path(frame.filename).is_relative_to(sys.prefix)


def _in_project(frame: traceback.FrameSummary) -> bool:
    return Path(frame.filename).is_relative_to(PROJECT) and not _in_venv(frame)


def _where(frame: traceback.FrameSummary) -> str:
    return f'{_file(frame)}:{frame.lineno} in {frame.name}'


def _sync_reason(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], device: str) -> str | None:
    """Why ``func(*args, **kwargs)`` makes the host wait for ``device`` (its op name), or ``None``."""
    name = func.overloadpacket.__name__
    op = f'aten.{name}'
    if name in ALWAYS_SYNC:
        return op
    if name in BOOL_INDEX:
        indices = args[1] if len(args) > 1 else kwargs.get('indices', ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f'{op} (boolean mask)'
        return None
    if name == 'repeat_interleave':
        if func._overloadname in ('Tensor', 'self_Tensor') and kwargs.get('output_size') is None:
            return f'{op} (tensor repeats)'
        return None
    if device != 'cpu' and name in ('_to_copy', 'copy_'):
        src, dst = (args[0], kwargs.get('device')) if name == '_to_copy' else (args[1], args[0].device)
        to_host = dst is not None and torch.device(dst).type == 'cpu'
        non_blocking = kwargs.get('non_blocking', args[2] if name == 'copy_' and len(args) > 2 else False)
        if src.device.type == device and to_host and not non_blocking:
            return f'{op} (device to host)'
    return None


class SyncDetector(TorchDispatchMode):
    """Records host-device synchronisations while its window is open (see the module docstring).

    Use :meth:`armed` around ``trainer.fit()`` (it wraps the Tensor methods that dispatch nothing on
    CPU and guarantees the mode is popped), and :class:`SyncWindow` to open and close the window.
    """

    def __init__(self, device: str = 'cpu') -> None:
        super().__init__()
        self.device = device
        self.records: list[Sync] = []
        self.windows = 0
        self.is_open = False
        self._paused = 0
        self._thread = threading.get_ident()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs, self.device)
        if reason is not None and not self._paused:
            self._record(reason, sys._getframe(1))
        return func(*args, **kwargs)

    def _record(self, op: str, frame: FrameType | None) -> None:
        stack = traceback.extract_stack(frame)
        caller = next((f for f in reversed(stack) if not any(Path(f.filename).is_relative_to(h) for h in HELPERS)), stack[-1])
        plugin = any(Path(caller.filename).is_relative_to(root) for root in SCOPE)
        outside_torch = [f for f in reversed(stack) if not Path(f.filename).is_relative_to(TORCH_DIR)] or [stack[-1]]
        site = outside_torch[0]
        owner = next((f for f in outside_torch if not f.name.startswith('<')), site)
        mine = tuple(_where(f) for f in stack if _in_project(f) or any(Path(f.filename).is_relative_to(r) for r in SCOPE))
        self.records.append(Sync(op, _where(site), f'{_file(owner)} in {owner.name}', mine, plugin))

    def open(self) -> None:
        if not self.is_open:
            self.__enter__()
            self.is_open = True
            self.windows += 1

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self.__exit__(None, None, None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextmanager
    def armed(self) -> Iterator[SyncDetector]:
        """Wrap ``Tensor.tolist/numpy/cpu`` and unwrap them (and pop the mode) on the way out."""
        originals = {name: torch.Tensor.__dict__.get(name) for name in HOOKED_METHODS}
        for name in HOOKED_METHODS:
            setattr(torch.Tensor, name, self._hook(name, getattr(torch.Tensor, name)))
        try:
            yield self
        finally:
            self.close()
            for name, original in originals.items():
                if original is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)

    def _hook(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        detector = self

        def hooked(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            on_device = tensor.device.type == detector.device
            if detector.is_open and not detector._paused and on_device and threading.get_ident() == detector._thread:
                detector._record(f'Tensor.{name}', sys._getframe(1))
            return method(tensor, *args, **kwargs)

        return hooked

    def plugin_syncs(self) -> list[Sync]:
        return [r for r in self.records if r.plugin]

    def composer_syncs(self) -> set[tuple[str, str, str]]:
        """``(op, file, function)`` of every recorded sync outside :data:`SCOPE`."""
        out = set()
        for r in self.records:
            if not r.plugin:
                file, function = r.owner.split(' in ')
                out.add((r.op, file, function))
        return out


def report(syncs: list[Sync]) -> str:
    counts = Counter(s.describe() for s in syncs)
    return '\n'.join(f'[{n}x] {text}' for text, n in counts.items())


class SyncWindow(Callback):
    """Opens the detector's window at ``AFTER_FORWARD`` and closes it at ``BATCH_END``, pausing it over
    later microbatches' forward passes; with ``forward``, opens it at ``BEFORE_FORWARD`` instead, so the
    forward passes are inside. Register it as the last callback."""

    def __init__(self, detector: SyncDetector, forward: bool = False) -> None:
        self.detector = detector
        self.forward = forward

    def after_forward(self, state: State, logger: Logger) -> None:
        self.detector.open()

    def before_forward(self, state: State, logger: Logger) -> None:
        if self.forward:
            self.detector.open()
        else:
            self.detector.close()

    def batch_end(self, state: State, logger: Logger) -> None:
        self.detector.close()

    def close(self, state: State, logger: Logger) -> None:
        self.detector.close()


@contextmanager
def cpu_metrics_exempt(detector: SyncDetector) -> Iterator[None]:
    """Pause the detector in ``DeferredMetrics.flush`` when it logs CPU values at once (its CPU path)."""
    original = DeferredMetrics.flush

    def flush(self: DeferredMetrics, logger: Logger) -> None:
        pending = self._pending
        if pending is not None and not pending.values.is_cuda:
            with detector.paused():
                return original(self, logger)
        return original(self, logger)

    DeferredMetrics.flush = flush  # type: ignore[method-assign]
    try:
        yield
    finally:
        DeferredMetrics.flush = original  # type: ignore[method-assign]


class IdDataset(TokenDataset):

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(i), 'sample_id': torch.tensor(i)}


def train(
    history: Path, extra: list[Algorithm] | None = None, batch_size: int = 8, microbatch: int = 4, max_duration: str = '4ba',
    loss_impl: str = 'auto', forward: bool = False, fused: bool = False,
) -> tuple[SyncDetector, LossReweighting, LossHistory]:
    """Train ``tiny_gpt2`` with LossReweighting (past warm-up) and LossHistory under a detector (window: :class:`SyncWindow`)."""
    detector = SyncDetector()
    reweighting = LossReweighting(**ALGORITHM, fused=fused)
    loss_history = LossHistory(folder=str(history), flush_interval='2ba')
    dataset = IdDataset()
    sampler = dist.get_sampler(dataset, shuffle=False) if dist.get_world_size() > 1 else None
    trainer = make_trainer(
        tiny_gpt2(loss_impl=loss_impl), [reweighting, *(extra or [])], max_duration=max_duration,
        train_dataloader=DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False),
        callbacks=[loss_history, SyncWindow(detector, forward)], device_train_microbatch_size=microbatch,
    )
    try:
        with detector.armed(), cpu_metrics_exempt(detector):
            trainer.fit()
    finally:
        trainer.close()
    return detector, reweighting, loss_history


LOSS_IMPLS = ('chunked', 'materialized')
"""``ReweighCausalLM``'s loss implementations on CPU: ``'chunked'`` computes the token losses from the hidden
states inside the forward pass (so only the ``forward`` window covers it); ``'materialized'`` in ``loss()``."""
WINDOWS = {'after-forward': False, 'with-forward': True}


@pytest.mark.parametrize('window', WINDOWS)
@pytest.mark.parametrize('loss_impl', LOSS_IMPLS)
def test_training_path_never_syncs(tmp_path: Path, loss_impl: str, window: str) -> None:
    forward = WINDOWS[window]
    detector, reweighting, _ = train(tmp_path / 'history', loss_impl=loss_impl, forward=forward)

    assert detector.windows == (4 if forward else 4 * 2), 'the window should open once per batch or microbatch'
    assert reweighting.last_microbatch is not None and reweighting.last_microbatch.active, 'reweighting never ran'
    assert len(list((tmp_path / 'history' / 'rank0').glob('part-*.parquet'))) == 2
    assert detector.records, 'the detector saw nothing in the window, not even Composer\'s own loss read'
    if syncs := detector.plugin_syncs():
        pytest.fail('host-device syncs in reweigh code:\n' + report(syncs))


def test_the_fused_step_never_syncs(tmp_path: Path) -> None:
    """``fused=True``: under the detector (a ``TorchDispatchMode``) the fused step runs its function op by op
    (``Fused``), so every op the compiled region is made of is checked; the graph itself is checked below."""
    detector, reweighting, _ = train(tmp_path / 'history', fused=True)

    assert reweighting.last_microbatch is not None and reweighting.last_microbatch.active, 'reweighting never ran'
    if syncs := detector.plugin_syncs():
        pytest.fail('host-device syncs in reweigh code:\n' + report(syncs))


@pytest.mark.parametrize('strategy', ['uniform', 'linupper', 'quadratic', 'extremes', 'upper'])
@pytest.mark.parametrize('token_normalize', [False, True])
def test_the_compiled_step_has_no_operator_that_syncs(strategy: str, token_normalize: bool) -> None:
    """The graph ``Fused`` compiles, traced as it traces it (padding, two ranks' slots), holds no op that reads a
    device value on the host."""
    from reweigh.algorithms.step import _FUSED_WEIGH
    from reweigh.algorithms.strategies import get_strategy

    losses = torch.tensor([1.0, float('nan'), 3.0, 2.0, 0.5, float('nan')])
    tokens = torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0, float('nan')])
    graph = _FUSED_WEIGH.trace(losses, tokens, losses[3:5], torch.tensor(0.7), start=3, strategy=get_strategy(strategy),
                               delta=1.0, token_normalize=token_normalize, active=True, world=2)
    ops = {node.target.overloadpacket.__name__ for node in graph.graph.nodes if node.op == 'call_function'
           and hasattr(node.target, 'overloadpacket')}
    assert ops and not ops & (ALWAYS_SYNC | BOOL_INDEX | {'repeat_interleave', '_to_copy', 'copy_'}), sorted(ops)


@pytest.mark.skipif(composer.__version__ != '0.32.1', reason='the list of Composer\'s own syncs is for Composer 0.32.1')
def test_window_reaches_past_the_optimizer_step_and_composers_own_syncs_are_known(tmp_path: Path) -> None:
    """The window is open when Composer reads the batch loss after the optimizer step, and that (not reweigh)
    is the only sync outside reweigh's code; a new one shows up here."""
    detector, _, _ = train(tmp_path / 'history')

    assert detector.composer_syncs() == COMPOSER_SYNCS, report([r for r in detector.records if not r.plugin])


class SyncingAlgorithm(Algorithm):
    """Control: does something that synchronises at ``event``."""

    def __init__(self, event: Event, sync: Callable[[State], object]) -> None:
        self.event = event
        self.sync = sync

    def match(self, event: Event, state: State) -> bool:
        return event == self.event

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        self.sync(state)


def _nonfinite_total(state: State) -> int:
    return next(a for a in state.algorithms if isinstance(a, LossReweighting)).nonfinite_total


CONTROLS: dict[str, tuple[Event, Callable[[State], object], str]] = {
    'item': (Event.AFTER_LOSS, lambda state: state.loss.item(), 'aten._local_scalar_dense'),
    'tolist': (Event.AFTER_LOSS, lambda state: state.outputs['per_sample_loss'].loss.tolist(), 'Tensor.tolist'),
    'bool-mask': (
        Event.AFTER_LOSS, lambda state: state.outputs['per_sample_loss'].loss.detach()[state.batch['sample_id'] > 2],
        'aten.index (boolean mask)',
    ),
    'nonzero': (Event.BEFORE_BACKWARD, lambda state: torch.where(state.batch['sample_id'] > 2), 'aten.nonzero'),
    'batch-end': (Event.BATCH_END, _nonfinite_total, 'aten._local_scalar_dense'),
}


@pytest.mark.parametrize('control', CONTROLS)
def test_detector_catches_a_sync_in_the_window(tmp_path: Path, control: str) -> None:
    event, sync, op = CONTROLS[control]
    detector, _, _ = train(tmp_path / 'history', extra=[SyncingAlgorithm(event, sync)], max_duration='2ba')

    caught = detector.plugin_syncs()
    assert caught and {s.op for s in caught} == {op}, report(detector.records)
    sites = ('test_no_sync.py', 'loss_reweighting.py', 'reweighter.py')
    assert all(any(f in s.site for f in sites) for s in caught), report(caught)
    assert len(caught) == (2 if event == Event.BATCH_END else 4), report(caught)  # once per batch or microbatch


def _syncing_lm_head(state: State) -> None:
    """Control: a forward hook on the LM head (where the chunked loss runs) that reads its output on the host."""

    def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        output.sum().item()

    state.model.model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize('window', WINDOWS)
def test_forward_passes_are_inside_the_window_only_with_forward(tmp_path: Path, window: str) -> None:
    forward = WINDOWS[window]
    control = SyncingAlgorithm(Event.FIT_START, _syncing_lm_head)
    detector, _, _ = train(tmp_path / 'history', extra=[control], max_duration='2ba', loss_impl='chunked', forward=forward)

    caught = [s for s in detector.plugin_syncs() if s.site.startswith('tests/test_no_sync.py') and s.site.endswith(' in hook')]
    assert len(caught) == (4 if forward else 0), report(detector.records)


WORLD = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, WORLD, port)
    results = {}
    for loss_impl in LOSS_IMPLS:
        for window, forward in WINDOWS.items():
            detector, reweighting, _ = train(
                Path(out_dir) / f'history-{loss_impl}-{window}', batch_size=4, microbatch=2, max_duration='3ba',
                loss_impl=loss_impl, forward=forward,
            )
            results[f'{loss_impl}/{window}'] = {
                'windows': detector.windows,
                'active': bool(reweighting.last_microbatch is not None and reweighting.last_microbatch.active),
                'plugin': [asdict(s) for s in detector.plugin_syncs()],
                'composer': sorted(detector.composer_syncs()),
            }
    Path(out_dir, f'{rank}.json').write_text(json.dumps(results))


def test_two_gloo_ranks_never_sync(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method='spawn')

    for rank in range(WORLD):
        results = json.loads((tmp_path / f'{rank}.json').read_text())
        assert sorted(results) == sorted(f'{i}/{w}' for i in LOSS_IMPLS for w in WINDOWS)
        for name, result in results.items():
            assert result['windows'] == (3 if name.endswith('with-forward') else 3 * 2) and result['active'], (name, result)
            assert result['composer'], f'{name}: the detector saw nothing in the window, not even Composer\'s own loss read'
            if syncs := [Sync(**{**s, 'stack': tuple(s['stack'])}) for s in result['plugin']]:
                pytest.fail(f'host-device syncs in reweigh code on rank {rank} ({name}):\n' + report(syncs))


def _train_mixed(interval: int, data_root: Path) -> SyncDetector:
    """Train on an online-mixing stream with ``OnlineMixing`` (policy updates every ``interval`` steps) under a
    detector, 8 batches of two microbatches."""
    from reweigh.callbacks import OnlineMixing
    from reweigh.models import build_causal_lm
    from reweigh.pipeline import ReweighStreamingDataset, build_mixing_dataloader, make_policy, natural_mix

    source = ReweighStreamingDataset(data_root)
    policy = make_policy('weights', natural_mix(source))
    loader = build_mixing_dataloader(source, policy.initial(), batch_size=8, interval=interval, lag=0)
    torch.manual_seed(0)
    model = build_causal_lm('gpt2', n_layer=1, n_embd=32, n_head=2, vocab_size=512, n_positions=source.seq_len)
    detector = SyncDetector()
    trainer = make_trainer(model, [LossReweighting(**ALGORITHM)], max_duration='8ba', train_dataloader=loader,
                           callbacks=[OnlineMixing(policy), SyncWindow(detector, False)], device_train_microbatch_size=4)
    try:
        with detector.armed(), cpu_metrics_exempt(detector):
            trainer.fit()
    finally:
        trainer.close()
    assert detector.windows == 8 * 2
    return detector


@pytest.mark.usefixtures('streaming_shm')
def test_online_mixing_syncs_only_when_it_updates_the_mix(small_dataset) -> None:
    """``OnlineMixing`` adds each microbatch's rows, weights and losses per domain on the device; only the update
    every ``interval`` steps reads them (one host read), so steps between updates sync nowhere in reweigh's code."""
    data_root, _ = small_dataset
    quiet = _train_mixed(100, data_root)  # no update in 8 steps
    assert not [r for r in quiet.records if r.site.startswith('callbacks/mixing.py')], report(quiet.records)
    assert not quiet.plugin_syncs(), report(quiet.plugin_syncs())
    updating = _train_mixed(4, data_root)  # updates after steps 4 and 8
    mixing = [r for r in updating.records if r.site.startswith('callbacks/mixing.py')]
    assert mixing and all(r.site.endswith(' in batch_end') for r in mixing), report(mixing)
    assert len({r.site for r in mixing}) == 1, report(mixing)  # one line: the update's read of the sums
    assert set(Counter(r.op for r in mixing).values()) == {2}, report(mixing)  # once per update, two updates
    assert not updating.plugin_syncs(), report(updating.plugin_syncs())
