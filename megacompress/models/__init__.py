"""megacompress.models: `ModelConfig` + presets, transformer blocks, the baseline `GPT`."""

from megacompress.models.config import PRESETS, ConfigError, ModelConfig
from megacompress.models.gpt import GPT, ModelOutput, gather_logits

__all__ = ["PRESETS", "ConfigError", "GPT", "ModelConfig", "ModelOutput", "gather_logits"]
