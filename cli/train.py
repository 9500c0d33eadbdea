"""``reweigh train``: run a YAML training config with Composer.

Also runnable as a module, which is how Composer's launcher starts one process per rank::

    composer -n 2 -m reweigh.cli.train yamls/tiny-cpu.yaml max_duration=20ba
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from composer import Trainer
from composer.core import Evaluator
from composer.utils import dist, format_name_with_dist, parse_uri, reproducibility
from omegaconf import OmegaConf

from reweigh.analysis.runs import CONFIG_FILE, HISTORY_FOLDER, METRICS_FILE, SUMMARY_FILE
from reweigh.callbacks import LossHistory, MetricsLog, RestoreRngOnResume
from reweigh.cli import data, train_cmd
from reweigh.cli.builders import (
    build_algorithms,
    build_callbacks,
    build_loggers,
    build_model,
    build_optimizer,
    build_scheduler,
)
from reweigh.cli.config import ConfigError
from reweigh.cli.mirror import MirrorCheckpoints, restore_latest_from_remote
from reweigh.cli.resume import set_aside_interrupted_checkpoints
from reweigh.io.local import write_atomically
from reweigh.io.uploads import DurableUploader
from reweigh.io.uri import is_remote
from reweigh.safety import safe_checkpoint_loading

__all__ = ['main', 'train']


def _world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', '1'))


def train(cfg: Any) -> dict[str, Any]:
    """Train as ``cfg`` says and return a summary (paths and final evaluation metrics).

    Args:
        cfg: A config from :func:`reweigh.cli.config.load_config`.

    Returns:
        dict: ``run_dir``, ``save_folder``, ``history``, ``steps`` and ``eval`` (metric name to value).

    Raises:
        ConfigError: For settings that turn out impossible once the data is known.
    """
    world = _world_size()
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
    run_dir = Path(cfg.run_dir or f'runs/{cfg.run_name}')
    save_folder = cfg.save_folder or str(run_dir / 'checkpoints')
    device = cfg.device if cfg.device != 'auto' else ('gpu' if torch.cuda.is_available() else 'cpu')
    # Before any StreamingDataset exists: each would otherwise set up (and tear down) a process group of
    # its own, and several in a row can deadlock the ranks' rendezvous.
    dist.initialize_dist(device, cfg.dist_timeout)
    reproducibility.seed_all(cfg.seed)
    # A remote save_folder makes a remote run folder beside it: history, metrics, config and summary go there.
    remote_folder = format_name_with_dist(save_folder, cfg.run_name) if is_remote(save_folder) else None
    remote_run = _run_folder_of(remote_folder) if remote_folder else None
    run_files = None
    if dist.get_global_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
        if remote_run:
            run_files = DurableUploader(remote_run, cfg.object_store_outage_s, name='run files')
            run_files.put(run_dir / CONFIG_FILE, CONFIG_FILE)

    dataset = data.prepare_if_needed(cfg)
    tokenizer = data.load_tokenizer(cfg, dataset)
    model = build_model(cfg, vocab_size=len(tokenizer), tokenizer=tokenizer)
    train_loader = data.build_train_loader(cfg, dataset, device_batch)
    # A validation split rarely divides by the batch size; Composer warns on every partial last batch.
    warnings.filterwarnings(
        'ignore', message=r'Cannot split tensor of length \d+ into batches of size', category=UserWarning,
    )
    evaluators = [
        Evaluator(label=f'val/{name}', dataloader=loader, metric_names=['LanguageCrossEntropy', 'LanguagePerplexity'])
        for name, loader in data.build_eval_loaders(cfg, dataset, device_batch).items()
    ]

    algorithms = build_algorithms(cfg)
    callbacks = [*build_callbacks(cfg), RestoreRngOnResume()]
    history_folder = None
    if cfg.history.enabled:  # a baseline (no algorithm) records too: LossHistory weighs it uniformly
        history_folder = cfg.history.folder or str(run_dir / HISTORY_FOLDER)
        upload = f'{remote_run}/{HISTORY_FOLDER}' if remote_run else None
        callbacks.append(LossHistory(history_folder, cfg.history.flush_interval, upload_to=upload,
                                     outage_limit_s=cfg.object_store_outage_s))
    metrics_log = MetricsLog(str(run_dir / METRICS_FILE), upload_to=remote_run, outage_limit_s=cfg.object_store_outage_s,
                             save_interval=cfg.save_interval)

    # In a log file a bar is thousands of redrawn lines; plain log lines read better there.
    progress_bar = cfg.progress_bar if cfg.progress_bar is not None else sys.stderr.isatty()
    # A remote save_folder: Composer saves locally and MirrorCheckpoints uploads, riding out outages.
    local_folder = str(run_dir / 'checkpoints') if remote_folder else save_folder
    if cfg.autoresume:
        folder = format_name_with_dist(local_folder, cfg.run_name)
        for path in set_aside_interrupted_checkpoints(folder, dist.get_global_rank()):
            print(f'reweigh train: {path.with_suffix("").name} is from an interrupted save; '
                  f'kept as {path}, resuming from the checkpoint before it', file=sys.stderr)
        if remote_folder and dist.get_local_rank() == 0:
            restored = restore_latest_from_remote(folder, remote_folder, rank=0)
            if restored:
                print(f'reweigh train: resuming from {remote_folder}/{restored}', file=sys.stderr)
        dist.barrier()
    if remote_folder:
        callbacks.append(MirrorCheckpoints(format_name_with_dist(local_folder, cfg.run_name), remote_folder,
                                           cfg.object_store_outage_s))
    parallelism = {'fsdp': dict(cfg.fsdp_config)} if cfg.fsdp_config else None
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
            loggers=[*build_loggers(cfg), metrics_log],
            precision=cfg.precision,
            device=device,
            device_train_microbatch_size=micro if micro is not None else device_batch,
            save_folder=local_folder,
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=not cfg.autoresume,
            autoresume=cfg.autoresume,
            load_path=cfg.load_path,
            load_weights_only=cfg.load_weights_only,
            seed=cfg.seed,
            progress_bar=progress_bar,
            log_to_console=not progress_bar,
            console_log_interval=cfg.console_log_interval,
            parallelism_config=parallelism,
            dist_timeout=cfg.dist_timeout,
        )
        summary_file = run_dir / SUMMARY_FILE
        try:
            if trainer.state.timestamp >= trainer.state.max_duration:
                print(f'reweigh train: {cfg.run_name} already trained for {cfg.max_duration}; nothing to do.')
                # An earlier attempt may have finished training while the object store was down: upload
                # what the bucket lacks (the callbacks do that at the start of a fit, and on close).
                for callback in [*callbacks, metrics_log]:
                    if isinstance(callback, (MirrorCheckpoints, LossHistory, MetricsLog)) and remote_folder:
                        callback.fit_start(trainer.state, trainer.logger)
                metrics = json.loads(summary_file.read_text())['eval'] if summary_file.is_file() else {}
            else:
                trainer.fit()
                metrics = {
                    f'{label}/{name}': float(metric.compute())
                    for label, group in trainer.state.eval_metrics.items()
                    for name, metric in group.items()
                }
        finally:
            trainer.close()
    for callback in [*callbacks, metrics_log]:  # an upload that gave up while closing (Composer swallows errors there)
        if getattr(callback, 'upload_error', None) is not None:
            raise callback.upload_error
    summary = {
        'run_name': cfg.run_name,
        'run_dir': str(run_dir),
        'save_folder': save_folder.format(run_name=cfg.run_name),
        'history': history_folder,
        'dataset': dataset.root,
        'dataset_cache': dataset.cache,
        'steps': int(trainer.state.timestamp.batch.value),
        'eval': metrics,
    }
    if dist.get_global_rank() == 0:
        write_atomically(summary_file, json.dumps(summary, indent=2))
        if run_files is not None:
            run_files.put(summary_file, SUMMARY_FILE)
            run_files.close()
    return summary


def _run_folder_of(save_folder: str) -> str:
    """``s3://b/runs/x/checkpoints`` -> ``s3://b/runs/x``: the remote run folder beside a remote ``save_folder``."""
    backend, bucket, path = parse_uri(save_folder)
    parent = path.strip('/').rsplit('/', 1)[0] if '/' in path.strip('/') else ''
    return f'{backend}://{bucket}' + (f'/{parent}' if parent else '')


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reweigh.cli.train CONFIG [KEY=VALUE ...]`` (what Composer's launcher runs per rank)."""
    parser = argparse.ArgumentParser(prog='reweigh.cli.train')
    parser.add_argument('config')
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args(argv)
    try:
        return train_cmd.run(args)
    except ValueError as e:  # ConfigError, UnsafeCheckpointError, unreadable data: user errors, as in `reweigh`
        print(f'reweigh train: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
