"""Reweighting where users already train: llm-foundry, the Hugging Face ``Trainer``, OLMo-core and torchtitan.

* :mod:`reweigh.integrations.llmfoundry`: reweigh's algorithm, callbacks and streaming dataloader in
  llm-foundry's registries (registered through entry points, so a YAML needs no code).
* :mod:`reweigh.integrations.transformers`: the same functional core in a ``transformers.Trainer``.
* :mod:`reweigh.integrations.olmo_core` and :mod:`reweigh.integrations.torchtitan`: the core in those trainers.
* :mod:`reweigh.integrations.extras`: pyproject.toml's extras, and the one-line error naming a missing one.

Each is imported on its own, so none pulls in another's framework.
"""
