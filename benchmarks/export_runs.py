"""Package two finished training runs for the results page (and ship ours as the default model).

Given a ``diffusers-linearizer train`` output folder and a ``benchmarks/baseline.py`` output folder that
were trained side by side with the same time budget, this writes:

* ``diffusers_linearizer/default_model/`` — our final EMA pipeline (``save_pretrained``: safetensors,
  model card with the training facts): what ``LinearizerPipeline.from_pretrained()`` and
  ``diffusers-linearizer generate`` load;
* ``benchmarks/models/linearizer_equal_steps/`` — our EMA weights at the checkpoint whose step equals
  the baseline's final step (``--checkpointing_steps`` must divide it; the baseline's step count is
  rounded down to the nearest checkpoint otherwise, and the page says so);
* ``benchmarks/models/baseline_unet/`` — the baseline's final EMA ``UNet2DModel`` snapshot;
* ``benchmarks/models/training_runs.json`` — steps, seconds, parameters, hardware of both runs.

    python benchmarks/export_runs.py --linearizer runs/default --baseline runs/baseline \\
        --note "one torch thread each, on the same 2-core machine, at the same time"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from common import MODELS, TRAINING_RUNS, pipeline_from_checkpoint, run_checkpoints, trainer_state

from diffusers_linearizer import DEFAULT_MODEL_DIR, replace_dir, write_text_atomic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--linearizer", required=True, help="Output folder of diffusers-linearizer train.")
    p.add_argument("--baseline", required=True, help="Output folder of benchmarks/baseline.py.")
    p.add_argument("--hardware", required=True, help="Where both were trained (named on the results page).")
    p.add_argument("--note", default="", help="How they shared the machine.")
    p.add_argument("--default-dir", default=DEFAULT_MODEL_DIR)
    args = p.parse_args(argv)

    with open(os.path.join(args.linearizer, "training_args.json")) as f:
        train_args = json.load(f)
    ckpts = run_checkpoints(args.linearizer)
    final_step = max(ckpts)
    final_state = trainer_state(ckpts[final_step])
    with open(os.path.join(args.baseline, "snapshots.json")) as f:
        base = json.load(f)
    base_final = max(base["snapshots"].values(), key=lambda r: r["step"])
    equal = max(s for s in ckpts if s <= base_final["step"])
    equal_state = trainer_state(ckpts[equal])
    solver = train_args.get("solver") or "euler"

    final = pipeline_from_checkpoint(ckpts[final_step], solver)
    params = sum(p.numel() for p in final.linearizer.parameters())
    config = ", ".join(f"{k}={train_args[k]}" for k in ("num_blocks", "conditioner_channels", "conditioner_layers")
                       if train_args.get(k) is not None) or "defaults"
    metrics = {"dataset": "Fashion-MNIST (train split, padded to 32×32)", "training_steps": final_step,
               "train_seconds": final_state["train_seconds_this_run"], "global_batch_size": train_args["train_batch_size"],
               "objective": train_args["objective"], "learning_rate": train_args["learning_rate"],
               "ema_decay": train_args["ema_decay"], "hardware": args.hardware,
               "results": "docs/results.md of the diffusers-linearizer repository"}
    os.makedirs(MODELS, exist_ok=True)
    replace_dir(lambda d: final.save_pretrained(d, metrics=metrics), args.default_dir)
    replace_dir(lambda d: pipeline_from_checkpoint(ckpts[equal], solver).save_pretrained(
        d, metrics=dict(metrics, training_steps=equal, train_seconds=equal_state["train_seconds_this_run"])),
        os.path.join(MODELS, "linearizer_equal_steps"))
    replace_dir(lambda d: shutil.copytree(os.path.join(args.baseline, "snapshots", f"step-{base_final['step']}"), d),
                 os.path.join(MODELS, "baseline_unet"))
    runs = {
        "hardware": args.hardware, "note": args.note,
        "linearizer": {"config": config, "parameters": params, "steps": final_step,
                       "seconds": final_state["train_seconds_this_run"], "learning_rate": train_args["learning_rate"],
                       "ema_decay": train_args["ema_decay"], "equal_steps_checkpoint": equal,
                       "seconds_at_equal_steps": equal_state["train_seconds_this_run"]},
        "baseline": {"width": base["width"], "parameters": base["parameters"], "steps": base_final["step"],
                     "seconds": base_final["train_seconds"], "learning_rate": base["learning_rate"],
                     "ema_decay": base["ema_decay"]},
    }
    write_text_atomic(TRAINING_RUNS, json.dumps(runs, indent=2) + "\n")
    print(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
