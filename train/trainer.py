"""A run of ``reweigh train`` as a library: where its files go, the Composer ``Trainer``, and the run itself.

:func:`train` takes a validated config (:func:`reweigh.train.config.load_config`) from start to ``summary.json``:
it sets up the process group and seeds, writes ``config.yaml``, builds the trainer (:func:`build_trainer`: data,
model, optimizer, the reweighting algorithm, the loss history, the metrics log, autoresume and, with a remote
``save_folder``, the checkpoint mirror), fits it, and writes the summary. :func:`place` decides where the run's
files go (:class:`Placement`). ``reweigh train``, and its module form that Composer's launcher runs per rank, parse
their arguments and call :func:`train`.

Example:
    >>> from reweigh.train.trainer import place, train
    >>> from reweigh.train.schema import TrainConfig
    >>> from omegaconf import OmegaConf
    >>> cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {'run_name': 'demo'})
    >>> placement = place(cfg)
    >>> placement.folder.root, placement.save_folder, placement.remote
    ('runs/demo', 'runs/demo/checkpoints', None)
    >>> # summary = train(load_config('yamls/tiny-cpu.yaml', ['max_duration=20ba']))
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from composer import Trainer
from composer.core import Callback, Evaluator
from composer.utils import create_interval_scheduler, dist, format_name_with_dist, parse_uri, reproducibility
from omegaconf import OmegaConf

from reweigh.callbacks import LossHistory, MetricsLog, MirrorCheckpoints, OnlineMixing, Preemption, RestoreRngOnResume
from reweigh.callbacks.mirror import publish_latest, restore_latest_from_remote
from reweigh.io.uploads import DurableUploader
from reweigh.io.uri import is_remote, scheme_of, schemes_text
from reweigh.pipeline.shared_memory import closing_datasets
from reweigh.safety import safe_checkpoint_loading, set_aside_interrupted_checkpoints
from reweigh.train import data
from reweigh.train.builders import (
    build_algorithms,
    build_callbacks,
    build_loggers,
    build_model,
    build_optimizer,
    build_scheduler,
)
from reweigh.train.config import ConfigError
from reweigh.train.disk import DiskFull, disk_full_message
from reweigh.train.lease import LEASE_SCHEMES, LeaseHeld, RunLease
from reweigh.train.run_folder import RunFolder

__all__ = ['BuiltTrainer', 'Placement', 'build_trainer', 'place', 'train']


@dataclass(frozen=True)
class Placement:
    """Where a run's files go: the local run folder, the checkpoints, and the remote run folder if there is one.

    Example:
        >>> from omegaconf import OmegaConf
        >>> from reweigh.train.schema import TrainConfig
        >>> from reweigh.train.trainer import place
        >>> cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig),
        ...                       {'run_name': 'x', 'save_folder': 's3://bucket/runs/{run_name}/checkpoints'})
        >>> placement = place(cfg)
        >>> placement.local_checkpoints, placement.remote_checkpoints, placement.remote.root
        ('runs/x/checkpoints', 's3://bucket/runs/x/checkpoints', 's3://bucket/runs/x')
    """

    folder: RunFolder
    """The local run folder (``run_dir``, default ``runs/{run_name}``)."""
    save_folder: str
    """The configured ``save_folder`` (``{run_name}`` not filled in), default the run folder's ``checkpoints/``."""
    local_checkpoints: str
    """Composer's (local) ``save_folder``: ``save_folder``, or the run folder's ``checkpoints/`` when that is remote."""
    remote_checkpoints: str | None
    """A remote ``save_folder`` with ``{run_name}`` filled in: the checkpoint mirror's target; else None."""
    remote: RunFolder | None
    """The remote run folder beside a remote ``save_folder``: history, metrics, config and summary go there too."""


def place(cfg: Any) -> Placement:
    """Where the run ``cfg`` describes writes its files (see :class:`Placement`); nothing is created."""
    folder = RunFolder(cfg.run_dir or f'runs/{cfg.run_name}')
    save_folder = cfg.save_folder or folder.checkpoints
    remote_checkpoints = format_name_with_dist(save_folder, cfg.run_name) if is_remote(save_folder) else None
    return Placement(
        folder=folder,
        save_folder=save_folder,
        local_checkpoints=folder.checkpoints if remote_checkpoints else save_folder,
        remote_checkpoints=remote_checkpoints,
        remote=RunFolder(_remote_run_folder(remote_checkpoints)) if remote_checkpoints else None,
    )


def _remote_run_folder(save_folder: str) -> str:
    """``s3://b/runs/x/checkpoints`` -> ``s3://b/runs/x``: the remote run folder beside a remote ``save_folder``."""
    backend, bucket, path = parse_uri(save_folder)
    parent = path.strip('/').rsplit('/', 1)[0] if '/' in path.strip('/') else ''
    return f'{backend}://{bucket}' + (f'/{parent}' if parent else '')


@dataclass
class BuiltTrainer:
    """A Composer ``Trainer`` for a run, and what the run needs from its making.

    Example:
        >>> from reweigh.train.trainer import BuiltTrainer
        >>> [name for name in BuiltTrainer.__dataclass_fields__]
        ['trainer', 'dataset', 'history', 'uploading']
    """

    trainer: Trainer
    dataset: data.DatasetRef
    """The training dataset (written to the summary)."""
    history: str | None
    """The local loss-history folder, or None when the history is off."""
    uploading: list[Callback]
    """The callbacks that upload to the remote run folder, in order (:class:`~reweigh.callbacks.LossHistory`,
    :class:`~reweigh.callbacks.MirrorCheckpoints`, :class:`~reweigh.callbacks.MetricsLog`, those the run has); an
    upload that gave up while the trainer closed is in their ``upload_error``."""


def _device_batch(cfg: Any) -> int:
    """The per-device batch: ``global_train_batch_size`` over the world size.

    Raises:
        ConfigError: If the world size does not divide the batch, or the microbatch is larger than the device's batch.
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if cfg.global_train_batch_size % world:
        raise ConfigError(
            f"config key 'global_train_batch_size': {cfg.global_train_batch_size} is not divisible by the "
            f'world size ({world}).',
        )
    device_batch = cfg.global_train_batch_size // world
    micro = cfg.device_train_microbatch_size
    if isinstance(micro, int) and micro > device_batch:
        raise ConfigError(
            f"config key 'device_train_microbatch_size': {micro} is larger than the per-device batch "
            f'({device_batch} = {cfg.global_train_batch_size} / {world} ranks).',
        )
    return device_batch


def _device(cfg: Any) -> str:
    return cfg.device if cfg.device != 'auto' else ('gpu' if torch.cuda.is_available() else 'cpu')


def _upload(uploader: DurableUploader, path: str) -> None:
    """A file of the local run folder to the same name in the remote one."""
    uploader.put(path, Path(path).name)


def _write_config(cfg: Any, placement: Placement) -> DurableUploader | None:
    """On rank 0: write ``config.yaml`` and, with a remote run folder, start uploading the run files there."""
    if dist.get_global_rank() != 0:
        return None
    placement.folder.write_config(OmegaConf.to_yaml(cfg))
    if placement.remote is None:
        return None
    run_files = DurableUploader(placement.remote.root, cfg.object_store_outage_s, name='run files')
    _upload(run_files, placement.folder.config)
    return run_files


def _evaluators(cfg: Any, dataset: data.DatasetRef, device_batch: int) -> list[Evaluator]:
    """One evaluator per validation domain, labelled ``val/{domain}``."""
    # A validation split rarely divides by the batch size; Composer warns on every partial last batch.
    warnings.filterwarnings(
        'ignore', message=r'Cannot split tensor of length \d+ into batches of size', category=UserWarning,
    )
    return [
        Evaluator(label=f'val/{name}', dataloader=loader, metric_names=['LanguageCrossEntropy', 'LanguagePerplexity'])
        for name, loader in data.build_eval_loaders(cfg, dataset, device_batch).items()
    ]


def _loss_history(cfg: Any, placement: Placement) -> list[Callback]:
    """``[LossHistory(...)]``, or ``[]`` when the history is off (a baseline records too, weighed uniformly)."""
    if not cfg.history.enabled:
        return []
    return [LossHistory(_history_folder(cfg, placement), cfg.history.flush_interval,
                        upload_to=placement.remote.history if placement.remote else None,
                        outage_limit_s=cfg.object_store_outage_s)]


def _history_folder(cfg: Any, placement: Placement) -> str | None:
    """The local loss-history folder, or None when the history is off."""
    return (cfg.history.folder or placement.folder.history) if cfg.history.enabled else None


def _prepare_autoresume(cfg: Any, placement: Placement) -> None:
    """Set interrupted saves aside and, with a remote ``save_folder``, fetch the bucket's latest checkpoint.

    On several nodes (each with a local ``save_folder`` of its own) rank 0 first makes the bucket's ``latest``
    pointer name its own latest checkpoint (uploading it if an earlier attempt stopped before it was), and the other
    nodes then take that one, replacing what their own folder names: every node resumes from the same step.
    """
    folder = format_name_with_dist(placement.local_checkpoints, cfg.run_name)
    for path in set_aside_interrupted_checkpoints(folder, dist.get_global_rank()):
        print(f'reweigh train: {path.with_suffix("").name} is from an interrupted save; '
              f'kept as {path}, resuming from the checkpoint before it', file=sys.stderr)
    remote = placement.remote_checkpoints
    several_nodes = dist.get_world_size() > dist.get_local_world_size()
    if remote and dist.get_global_rank() == 0:
        restored = restore_latest_from_remote(folder, remote, rank=0)
        if restored:
            print(f'reweigh train: resuming from {remote}/{restored}', file=sys.stderr)
        if several_nodes:
            publish_latest(folder, remote)
    dist.barrier()
    if remote and several_nodes and dist.get_local_rank() == 0 and dist.get_global_rank() != 0:
        if restored := restore_latest_from_remote(folder, remote, rank=0, replace=True):
            print(f'reweigh train: node {dist.get_node_rank()} resumes from {remote}/{restored}, as rank 0 does',
                  file=sys.stderr)
    dist.barrier()


def _mirror(cfg: Any, placement: Placement) -> list[Callback]:
    """``[MirrorCheckpoints(...)]`` for a remote ``save_folder`` (Composer saves locally, it uploads, riding out
    outages), else ``[]``."""
    if not placement.remote_checkpoints:
        return []
    return [MirrorCheckpoints(format_name_with_dist(placement.local_checkpoints, cfg.run_name),
                              placement.remote_checkpoints, cfg.object_store_outage_s)]


def build_trainer(cfg: Any, placement: Placement, device_batch: int) -> BuiltTrainer:
    """The Composer ``Trainer`` of a run: data, model, optimizer, algorithms, callbacks, loggers, checkpoints.

    Call it as :func:`train` does: with the process group set up and the seeds set, after ``config.yaml`` is
    written. With ``autoresume``, interrupted saves are set aside first and, with a remote ``save_folder``, the
    bucket's latest checkpoint is fetched; the ``Trainer`` then loads its checkpoint as data only
    (:func:`reweigh.safety.safe_checkpoint_loading`).

    Args:
        cfg: A validated config (:func:`reweigh.train.config.load_config`).
        placement: Where the run's files go (:func:`place`).
        device_batch: Samples per device and batch (``global_train_batch_size`` over the world size).

    Returns:
        BuiltTrainer: The trainer, the training dataset, the history folder and the uploading callbacks.

    Raises:
        ConfigError: For settings that turn out impossible once the data is known.

    Example:
        >>> from reweigh.train.trainer import build_trainer
        >>> # built = build_trainer(cfg, place(cfg), device_batch=8); built.trainer.fit()
    """
    dataset = data.prepare_if_needed(cfg)
    tokenizer = data.load_tokenizer(cfg, dataset)
    model = build_model(cfg, vocab_size=len(tokenizer), tokenizer=tokenizer)
    mixing: list[Callback] = []
    if cfg.mixing is not None:
        train_loader, policy = data.build_mixed_train_loader(cfg, dataset, device_batch, dist.get_global_rank(),
                                                             dist.get_world_size())
        mixing = [OnlineMixing(policy, cfg.mixing.strategy, cfg.mixing.r)]
    else:
        train_loader = data.build_train_loader(cfg, dataset, device_batch)
    evaluators = _evaluators(cfg, dataset, device_batch)
    algorithms = build_algorithms(cfg)
    preemption = Preemption(cfg.preemption.check_every)
    callbacks = [*build_callbacks(cfg), RestoreRngOnResume(), preemption, *mixing]
    history = _loss_history(cfg, placement)
    metrics_log = MetricsLog(placement.folder.metrics, upload_to=placement.remote.root if placement.remote else None,
                             outage_limit_s=cfg.object_store_outage_s, save_interval=cfg.save_interval)
    if cfg.autoresume:
        _prepare_autoresume(cfg, placement)
    mirror = _mirror(cfg, placement)
    callbacks += [*history, *mirror]
    # In a log file a bar is thousands of redrawn lines; plain log lines read better there.
    progress_bar = cfg.progress_bar if cfg.progress_bar is not None else sys.stderr.isatty()
    micro = cfg.device_train_microbatch_size
    # Checkpoints (autoresume, load_path; local or in a bucket) are data: loading one runs none of its code.
    with safe_checkpoint_loading():
        trainer = Trainer(
            run_name=cfg.run_name,
            model=model,
            train_dataloader=train_loader,
            eval_dataloader=evaluators or None,
            eval_interval=cfg.eval_interval,
            max_duration=cfg.max_duration,
            optimizers=build_optimizer(cfg, model),
            schedulers=build_scheduler(cfg),
            algorithms=algorithms,
            callbacks=callbacks,
            loggers=[*build_loggers(cfg, placement.folder.root), metrics_log],
            precision=cfg.precision,
            device=_device(cfg),
            device_train_microbatch_size=micro if micro is not None else device_batch,
            save_folder=placement.local_checkpoints,
            save_interval=preemption.save_interval(create_interval_scheduler(cfg.save_interval)),
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=not cfg.autoresume,
            autoresume=cfg.autoresume,
            load_path=cfg.load_path,
            load_weights_only=cfg.load_weights_only,
            seed=cfg.seed,
            progress_bar=progress_bar,
            log_to_console=not progress_bar,
            console_log_interval=cfg.console_log_interval,
            parallelism_config={'fsdp': dict(cfg.fsdp_config)} if cfg.fsdp_config else None,
            dist_timeout=cfg.dist_timeout,
        )
    return BuiltTrainer(trainer, dataset, _history_folder(cfg, placement), uploading=[*history, *mirror, metrics_log])


def _fit(cfg: Any, built: BuiltTrainer, placement: Placement) -> dict[str, float]:
    """Fit (unless an earlier attempt finished) and close the trainer; the final evaluation metrics."""
    trainer = built.trainer
    with safe_checkpoint_loading():
        try:
            if trainer.state.timestamp >= trainer.state.max_duration:
                print(f'reweigh train: {cfg.run_name} already trained for {cfg.max_duration}; nothing to do.')
                # An earlier attempt may have finished training while the object store was down: upload
                # what the bucket lacks (the callbacks do that at the start of a fit, and on close).
                if placement.remote_checkpoints:
                    for callback in built.uploading:
                        callback.fit_start(trainer.state, trainer.logger)
                return placement.folder.read_summary().get('eval', {})
            trainer.fit()
            return {
                f'{label}/{name}': float(metric.compute())
                for label, group in trainer.state.eval_metrics.items()
                for name, metric in group.items()
            }
        finally:
            trainer.close()


def train(cfg: Any) -> dict[str, Any]:
    """Train as ``cfg`` says and return a summary (paths and final evaluation metrics), also in ``summary.json``.

    Args:
        cfg: A config from :func:`reweigh.train.config.load_config`.

    Returns:
        dict: ``run_name``, ``run_dir``, ``save_folder``, ``history``, ``dataset``, ``dataset_cache``, ``steps`` and
        ``eval`` (metric name to value).

    Raises:
        ConfigError: For settings that turn out impossible once the data is known.

    Example:
        >>> from reweigh.train import load_config, train
        >>> # summary = train(load_config('yamls/tiny-cpu.yaml', ['max_duration=20ba'])); summary['eval']
    """
    device_batch = _device_batch(cfg)
    # Before any StreamingDataset exists: each would otherwise set up (and tear down) a process group of
    # its own, and several in a row can deadlock the ranks' rendezvous.
    dist.initialize_dist(_device(cfg), cfg.dist_timeout)
    reproducibility.seed_all(cfg.seed)
    placement = place(cfg)
    leases = _take_leases(cfg, placement)  # before anything is written: a second launch changes nothing
    try:
        # the datasets' shared memory goes back when the run ends, not when the process does (a notebook or a
        # test suite trains many times in one process)
        with closing_datasets():
            return _train(cfg, placement, device_batch)
    except Exception as e:
        if (message := disk_full_message(e, _written(cfg, placement))) is None:
            raise
        raise DiskFull(f'{message}; free space there and run the same command to resume') from e
    finally:
        for lease in reversed(leases):
            lease.release()


def _written(cfg: Any, placement: Placement) -> dict[str, str]:
    """What a run writes locally, and where (for :func:`~reweigh.train.disk.disk_full_message`)."""
    written = {'a checkpoint': format_name_with_dist(placement.local_checkpoints, cfg.run_name),
               'metrics.jsonl': placement.folder.metrics, 'the log file': placement.folder.root}
    if (history := _history_folder(cfg, placement)) is not None:
        written['a loss-history part'] = history
    return written


def _take_leases(cfg: Any, placement: Placement) -> list[RunLease]:
    """Rank 0 takes the run folder's lease, and the remote run folder's where its store has them; every rank learns
    whether it did (once, at the start).

    Raises:
        LeaseHeld: On every rank, if another launch holds one.
    """
    leases: list[RunLease] = []
    refusal = None
    if dist.get_global_rank() == 0:
        folders = [placement.folder.root]
        if placement.remote is not None:
            if scheme_of(placement.remote.root) in LEASE_SCHEMES:
                folders.append(placement.remote.root)
            else:
                print(f'reweigh train: note: {placement.remote.root} takes no lease (only '
                      f'{schemes_text(LEASE_SCHEMES)} run folders do); '
                      f"the local run folder's lease keeps a second launch out of that folder only",
                      file=sys.stderr)
        try:
            for folder in folders:
                leases.append(RunLease(folder, cfg.lease.stale_after_s, cfg.lease.force).acquire())
        except ValueError as e:  # LeaseHeld, or a bucket's lease that cannot be read or written
            refusal = str(e)
            for lease in reversed(leases):
                lease.release()
            leases = []
    outcome = [refusal]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise LeaseHeld(outcome[0])
    return leases


def _train(cfg: Any, placement: Placement, device_batch: int) -> dict[str, Any]:
    run_files = _write_config(cfg, placement)
    built = build_trainer(cfg, placement, device_batch)
    metrics = _fit(cfg, built, placement)
    for callback in built.uploading:  # an upload that gave up while closing (Composer swallows errors there)
        if callback.upload_error is not None:
            raise callback.upload_error
    summary = {
        'run_name': cfg.run_name,
        'run_dir': placement.folder.root,
        'save_folder': placement.save_folder.format(run_name=cfg.run_name),
        'history': built.history,
        'dataset': built.dataset.root,
        'dataset_cache': built.dataset.cache,
        'steps': int(built.trainer.state.timestamp.batch.value),
        'eval': metrics,
    }
    if dist.get_global_rank() == 0:
        placement.folder.write_summary(summary)
        if run_files is not None:
            _upload(run_files, placement.folder.summary_file)
            run_files.close()
    return summary
