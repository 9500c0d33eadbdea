"""Reweighting where users already train: llm-foundry YAML configs and the Hugging Face ``Trainer``.

* :mod:`reweigh.integrations.llmfoundry`: reweigh's algorithm, callbacks and streaming dataloader in
  llm-foundry's registries (registered through entry points, so a YAML needs no code).
* :mod:`reweigh.integrations.transformers`: the same functional core in a ``transformers.Trainer``.

Each is imported on its own, so neither pulls in the other's framework.
"""
