"""Training recipes (YAML) and DeepSpeed configs, installed as ``fastrobust.configs``."""
