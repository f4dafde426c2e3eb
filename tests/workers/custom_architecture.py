"""Worker: the engine trains, exports and reloads a model class registered outside megacompress.

    python tests/workers/custom_architecture.py --out DIR --common "k=v;k=v"

``SentenceProbe`` is a GPT that also takes ``eos_mask`` (from the document dataset's
sentence sidecar) and uses it: no loss on sentence-end targets. Writes ``DIR/result.json``:
losses, the eos tokens the model saw, the exported architecture and whether the reloaded
model's logits equal the trained one's; and the error a plain GPT gives on the same batches.
"""

import argparse
import json
from pathlib import Path

import torch

from megacompress.models.gpt import GPT
from megacompress.models.registry import load_pretrained, register_architecture
from megacompress.training.config import load_config
from megacompress.training.convert import export
from megacompress.training.trainer import Trainer


@register_architecture("sentence_probe", inputs=("input_ids", "position_ids", "document_ids", "labels", "eos_mask"),
                       mask_kinds=("document_causal",))
class SentenceProbe(GPT):
    seen_eos = 0

    def forward(self, input_ids, position_ids=None, document_ids=None, labels=None, eos_mask=None, **kw):
        if eos_mask is not None:
            SentenceProbe.seen_eos += int(eos_mask.sum())
            if labels is not None:
                labels = labels.masked_fill(eos_mask, -100)
        return super().forward(input_ids, position_ids, document_ids, labels, **kw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--common", default="")
    args = parser.parse_args()
    out = Path(args.out)
    common = [s for s in args.common.split(";") if s]
    config = load_config(None, common + ["model.architecture=sentence_probe", f"logging.run_dir={out}/probe"])
    trainer = Trainer(config)
    result = trainer.train()
    probe = torch.arange(16).reshape(1, 16) % 200
    with torch.no_grad():
        trained_logits = trainer.engine.module(probe).logits
    exported = export(Path(result.checkpoint).parent, out / "exported")
    reloaded = load_pretrained(exported)
    with torch.no_grad():
        same = torch.equal(reloaded(probe).logits, trained_logits)
    record = {"losses": [r["loss"] for r in result.history], "seen_eos": SentenceProbe.seen_eos,
              "reloaded_class": type(reloaded).__name__, "architecture": reloaded.config.architecture,
              "same_logits": same}
    try:  # refused when the datasets are built, before any step
        Trainer(load_config(None, common + [f"logging.run_dir={out}/gpt"]))
        record["gpt_error"] = None
    except ValueError as exc:
        record["gpt_error"] = str(exc)
    (out / "result.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
