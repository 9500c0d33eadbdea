"""Mixed precision and the shipped FSDP config, on CPU.

* ``amp_bf16``: Composer 0.32.1 refuses it on CPU (``_validate_precision``: "Precision.AMP_BF16 is not
  supported for CPU training") and its precision context would do nothing there. With those two functions
  patched so that Composer's own amp_bf16 path runs under ``torch.autocast('cpu', dtype=torch.bfloat16)``
  (what it does with ``'cuda'`` on a GPU), a Trainer with the fused loss and LossReweighting trains: the
  language-model head runs in bf16, the per-sample losses, weights and the reweighted loss stay fp32, the
  weights sum to 1, and the losses are within bf16 rounding of an fp32 run (and not equal to it).
* ``reweigh train`` stops with a config error naming the key for ``precision: amp_bf16`` or ``fsdp_config``
  on a CPU run (Composer's FSDP calls ``torch.cuda.current_device()``; see test_sharded.py).
* ``yamls/llama-1.4b-fsdp.yaml`` loads as shipped, and, with a tiny Llama, the local test corpus, CPU, fp32
  and no ``fsdp_config`` (which needs GPUs), builds and trains 2 steps through ``reweigh train``, so the
  shipped config cannot rot unnoticed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
import torch
from composer.core import Callback, Precision, State
from composer.loggers import Logger
from lm_helpers import make_trainer, tiny_gpt2

from reweigh.algorithms import LossReweighting
from reweigh.cli.main import main
from reweigh.train.config import ConfigError, load_config

LLAMA_FSDP = Path(__file__).resolve().parents[1] / 'yamls' / 'llama-1.4b-fsdp.yaml'


@pytest.fixture
def cpu_amp_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let Composer's amp_bf16 path run on CPU, with CPU autocast where it would use CUDA autocast."""
    import composer.trainer.trainer as trainer_module

    validate, context = trainer_module._validate_precision, trainer_module.get_precision_context

    def validate_precision(precision: Precision, device: Any) -> None:
        if Precision(precision) != Precision.AMP_BF16:
            validate(precision, device)

    @contextlib.contextmanager
    def precision_context(precision: Any, *args: Any, **kwargs: Any) -> Iterator[None]:
        if Precision(precision) == Precision.AMP_BF16:
            with torch.autocast('cpu', dtype=torch.bfloat16):
                yield
        else:
            with context(precision, *args, **kwargs):
                yield

    monkeypatch.setattr(trainer_module, '_validate_precision', validate_precision)
    monkeypatch.setattr(trainer_module, 'get_precision_context', precision_context)


class Record(Callback):
    """Per microbatch: what LossReweighting used, the loss it set, and the autocast state of the LM head."""

    def __init__(self, algorithm: LossReweighting) -> None:
        self.algorithm = algorithm
        self.rows: list[dict[str, Any]] = []
        self.head_autocast: list[torch.dtype | None] = []

    def fit_start(self, state: State, logger: Logger) -> None:
        def pre_hook(module: torch.nn.Module, args: Any) -> None:
            enabled = torch.is_autocast_enabled('cpu')
            self.head_autocast.append(torch.get_autocast_dtype('cpu') if enabled else None)

        state.model.model.get_output_embeddings().register_forward_pre_hook(pre_hook)

    def after_loss(self, state: State, logger: Logger) -> None:
        used = self.algorithm.last_microbatch
        assert used is not None
        self.rows.append({'loss': state.loss.detach().clone(), 'losses': used.losses.clone(),
                          'weights': used.weights.clone(), 'active': used.active})


def _train(precision: str) -> Record:
    model = tiny_gpt2()
    assert model.fused
    algorithm = LossReweighting(strategy='linupper', r=0.7, warmup='1ba')
    record = Record(algorithm)
    make_trainer(model, [algorithm], max_duration='3ba', callbacks=[record], precision=precision,
                 device_train_microbatch_size=4).fit()
    return record


def test_amp_bf16_on_cpu_keeps_per_sample_losses_weights_and_loss_fp32(cpu_amp_bf16):
    bf16, fp32 = _train('amp_bf16'), _train('fp32')
    assert bf16.head_autocast == [torch.bfloat16] * 6 and fp32.head_autocast == [None] * 6
    assert [row['active'] for row in bf16.rows] == [False, False, True, True, True, True]
    for row in bf16.rows:
        assert row['loss'].dtype == row['losses'].dtype == row['weights'].dtype == torch.float32
        assert torch.isfinite(row['loss']) and torch.isfinite(row['losses']).all()
        assert float(row['weights'].sum()) == pytest.approx(1.0, abs=1e-6)
    # same parameters before the first update: the first microbatch differs from fp32 by bf16 rounding only
    first_bf16, first_fp32 = bf16.rows[0]['losses'], fp32.rows[0]['losses']
    assert not torch.equal(first_bf16, first_fp32)
    torch.testing.assert_close(first_bf16, first_fp32, rtol=2e-2, atol=0)


TINY_LLAMA = ('{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, '
              'num_key_value_heads: 2, max_position_embeddings: 64}')


def _cli_overrides(data_root: Path, run_dir: Path, **extra: str) -> list[str]:
    values = {
        'model.config': TINY_LLAMA,
        'train_loader.dataset.remote': 'null', 'train_loader.dataset.local': str(data_root),
        'eval_loader.dataset.remote': 'null', 'eval_loader.dataset.local': str(data_root),
        'train_loader.num_workers': '0',
        'run_dir': str(run_dir), 'save_folder': str(run_dir / 'checkpoints'),
        'global_train_batch_size': '8',
        'max_duration': '2ba', 'eval_interval': '2ba', 'save_interval': '2ba',
        'algorithms.loss_reweighting.warmup': '1ba',
        'progress_bar': 'false',
        # CPU: Composer trains in fp32 only there, and its FSDP needs GPUs (see test_sharded.py)
        'device': 'cpu', 'precision': 'fp32', 'fsdp_config': 'null',
    }
    values.update(extra)
    return [f'{k}={v}' for k, v in values.items() if v is not None]


def test_shipped_llama_fsdp_yaml_loads_as_shipped():
    cfg = load_config(LLAMA_FSDP)
    assert cfg.model.family == 'llama' and cfg.model.config.num_hidden_layers == 24
    assert cfg.precision == 'amp_bf16' and cfg.device == 'gpu' and cfg.fsdp_config.sharding_strategy == 'FULL_SHARD'
    assert cfg.train_loader.dataset.remote.startswith('s3://') and cfg.save_folder.startswith('s3://')
    assert cfg.algorithms.loss_reweighting.strategy == 'linupper'


@pytest.mark.parametrize(('dropped', 'key'), [('fsdp_config', 'fsdp_config'), ('precision', 'precision')])
def test_mixed_precision_and_fsdp_on_cpu_are_config_errors(dropped, key, small_dataset, tmp_path):
    """The shipped amp_bf16 and fsdp_config, each on its own, with device: cpu."""
    data_root, _ = small_dataset
    with pytest.raises(ConfigError, match=f"config key '{key}': .*this run is on the CPU"):
        load_config(LLAMA_FSDP, _cli_overrides(data_root, tmp_path, **{dropped: None}))


def test_reweigh_train_with_amp_bf16_on_cpu_exits_2_before_anything_runs(small_dataset, tmp_path, capsys):
    data_root, _ = small_dataset
    overrides = _cli_overrides(data_root, tmp_path / 'run', precision=None)  # the shipped amp_bf16
    assert main(['train', str(LLAMA_FSDP), *overrides]) == 2
    assert "config key 'precision': amp_bf16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


@pytest.mark.filterwarnings('ignore:The memory monitor only works on CUDA devices')  # the shipped memory_monitor
def test_shipped_llama_fsdp_yaml_trains_two_steps_on_cpu_with_a_tiny_model(small_dataset, streaming_shm, tmp_path, capsys):
    data_root, prepared = small_dataset
    run_dir = tmp_path / 'run'
    assert main(['train', str(LLAMA_FSDP), *_cli_overrides(data_root, run_dir)]) == 0
    assert 'reweigh train: finished llama-1.4b-linupper after 2 steps' in capsys.readouterr().out

    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['steps'] == 2
    for domain in prepared.manifest.domain_names:
        assert summary['eval'][f'val/{domain}/LanguageCrossEntropy'] > 0
    assert (run_dir / 'checkpoints' / 'ep0-ba2-rank0.pt').is_file()
    history = pads.dataset(str(run_dir / 'history'), format='parquet').to_table().to_pandas()
    assert len(history) == 2 * 8
    assert history.groupby('step').active.first().tolist() == [False, True]
    # device_train_microbatch_size 4 (as shipped): two microbatches per step, each normalised to 1
    assert history.groupby(['step', 'microbatch']).weight.sum().to_numpy() == pytest.approx([1.0] * 4, abs=1e-6)
