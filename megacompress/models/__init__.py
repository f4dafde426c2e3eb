"""megacompress.models: `ModelConfig` + presets, transformer blocks, the architecture registry,
the baseline `GPT`."""

from megacompress.models.config import PRESETS, ConfigError, ModelConfig
from megacompress.models.gpt import GPT
from megacompress.models.outputs import ModelOutput, gather_logits
from megacompress.models.registry import build_model, get_architecture, load_pretrained

__all__ = ["PRESETS", "ConfigError", "GPT", "ModelConfig", "ModelOutput", "build_model", "gather_logits",
           "get_architecture", "load_pretrained"]
