"""Ranks of tests/integration/test_families_fsdp.py: the training recipe under FSDP2, for
every model family in one torchrun launch.

    torchrun --standalone --nproc_per_node=2 -m tests.families_fsdp ROOT FAMILY...

For each family, ROOT/models/FAMILY (a tiny model written by the test) is trained for
MAX_STEPS steps on ROOT/data by `sami_core.train.SamiTrainer` (the recipe itself: only
rank 0 reads the weights, `fully_shard` on each decoder layer found by
`decoder_layers`, then the root; activation checkpointing; HF checkpoint + resumable
state), in one process group shared by all families. Rank 0 writes, per family,
ROOT/runs/FAMILY/fsdp.json (how the model was sharded) and trained.pt (the full state
dict gathered after training), which the test compares with the saved checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sami_core.spec import TrainSpec
from sami_core.train import SamiTrainer, decoder_layers

MAX_STEPS = 2


def train_family(root: Path, family: str) -> SamiTrainer:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    spec = TrainSpec.model_validate({
        "model": {"path": str(root / "models" / family), "prompt_format": "plain"},
        "data": {"path": str(root / "data")},
        "training": {"optimizer": "adamw", "lr": 1e-3, "grad_accum": 1, "queries_per_microbatch": 1,
                     "max_steps": MAX_STEPS, "save_every": MAX_STEPS, "seed": 0,
                     "activation_checkpointing": True, "fsdp": "yes"},
    })
    run_dir = root / "runs" / family
    trainer = SamiTrainer(spec, run_dir)
    trainer.setup()
    model = trainer.model
    layers = decoder_layers(model)
    params = dict(model.named_parameters())
    report = {
        "family": family,
        "model_class": type(model).__name__,
        "layer_classes": sorted({type(m).__name__ for m in layers}),
        "n_layers": len(layers),
        "n_config_layers": model.config.num_hidden_layers,
        "layers_sharded": all(isinstance(m, FSDPModule) for m in layers),
        "root_sharded": isinstance(model, FSDPModule),
        "all_params_dtensor": all(isinstance(p, DTensor) for p in params.values()),
        # parameter name -> (full shape, this rank's shard shape): a sharded parameter's differ
        "shards": {n: [list(p.shape), list(p.to_local().shape)] for n, p in params.items() if isinstance(p, DTensor)},
    }
    trainer.train()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.is_main:
        torch.save(full, run_dir / "trained.pt")
        (run_dir / "fsdp.json").write_text(json.dumps(report))
    trainer._barrier()
    return trainer


def main(argv: list[str]) -> int:
    root, families = Path(argv[0]), argv[1:]
    trainer = None
    for family in families:  # one process group for all: SamiTrainer.setup joins it once
        trainer = train_family(root, family)
    if trainer is not None:
        trainer.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
