"""One RobustTrainer run on the PAWS-X fixture, alone or under torchrun (used by test_integrations_hf).

    python hf_worker.py DATA MODEL OUT METHOD_JSON MICRO ACCUM [ZERO_STAGE]

Writes OUT/losses.json (per optimizer step, rank 0) and the final model (trainer.save_model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from fastrobust.config import TaskConfig
from fastrobust.data import load_task
from fastrobust.integrations.hf import RobustTrainer

SEED = 3


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    data, model_dir, out, method, micro, accum = argv[:6]
    stage = int(argv[6]) if len(argv) > 6 else None
    task = load_task(TaskConfig(name="pawsx", source="local", path=data, languages=["en", "de"], gxlt=False))
    tok = AutoTokenizer.from_pretrained(model_dir)
    # The model first: with a ZeRO-3 config alive, from_pretrained would partition it at load time.
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    extra = {}
    if stage is not None:
        # Trainer fills every "auto" from TrainingArguments and hands DeepSpeed its torch AdamW.
        extra["deepspeed"] = {
            # ZeRO-3: gather the shards into one model.safetensors when saving
            "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": stage == 3},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
        }
    args = TrainingArguments(
        output_dir=out,
        seed=SEED,
        per_device_train_batch_size=int(micro),
        gradient_accumulation_steps=int(accum),
        learning_rate=2e-3,
        max_steps=4,
        warmup_steps=0.25,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **extra,
    )
    trainer = RobustTrainer(
        model=model,
        args=args,
        train_dataset=task.train,
        processing_class=tok,
        method=json.loads(method),
        max_length=32,
        data_order="fastrobust",
    )
    trainer.train()
    trainer.save_model(out)
    if trainer.args.process_index == 0:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        Path(out, "losses.json").write_text(json.dumps(losses))
    if torch.distributed.is_initialized():
        # every rank leaves together: one that exits while its peer still talks to it can abort the peer
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
