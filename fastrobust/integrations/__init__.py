"""fastrobust's methods inside other trainers.

- :mod:`fastrobust.integrations.hf`: ``RobustTrainer`` (a ``transformers.Trainer`` subclass) and
  ``EmbeddingNoiseCallback`` (RS-RP as a callback for any ``Trainer``).

They call the same per-step method code as ``fastrobust train`` (``fastrobust.methods`` through
:func:`fastrobust.training.engine.method_step`), never a copy of it.
"""
