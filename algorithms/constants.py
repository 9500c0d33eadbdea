"""The method's default settings and the name its metrics are logged under, defined once and free of torch.

Every adapter (Composer, Hugging Face), the YAML config schema and the CLI take their defaults from here, so that
``import reweigh.algorithms.constants`` stays as light as the ``reweigh --help`` that shows them.

Example:
    >>> from reweigh.algorithms.constants import DEFAULT_STRATEGY, DEFAULT_WARMUP_STEPS
    >>> DEFAULT_STRATEGY, DEFAULT_WARMUP_STEPS
    ('linupper', 1000)
"""

__all__ = ['DEFAULT_DELTA', 'DEFAULT_R', 'DEFAULT_STRATEGY', 'DEFAULT_TOKEN_NORMALIZE', 'DEFAULT_WARMUP_STEPS', 'METRIC_PREFIX']

DEFAULT_STRATEGY = 'linupper'
"""The paper's best strategy."""
DEFAULT_R = 1.0
"""Softmax temperature."""
DEFAULT_DELTA = 1.0
"""Half-width of the loss normalisation interval."""
DEFAULT_WARMUP_STEPS = 1000
"""Optimizer steps of uniform training before reweighting starts (the paper's ``burnout_steps``)."""
DEFAULT_TOKEN_NORMALIZE = False
"""Weights per sample (sample-mean loss), not per token."""
METRIC_PREFIX = 'loss_reweighting'
"""Every adapter logs its statistics as ``loss_reweighting/<name>``."""
