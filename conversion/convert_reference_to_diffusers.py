#!/usr/bin/env python
"""Convert a checkpoint of the Linearizer paper's original code into a diffusers ``LinearizerPipeline``.

    python conversion/convert_reference_to_diffusers.py --checkpoint_path RUN/models/model.pth --dump_path OUT

The checkpoint (a whole pickled module) is read with a restricted unpickler: nothing it names is imported or
run. ``args.json`` is looked up as ``RUN/args.json`` (the reference layout) unless ``--args_json`` is given.
The output directory holds ``model_index.json``, ``linearizer/`` (config + safetensors),
``scheduler/scheduler_config.json`` (the reference's sampler) and a model card stating the source.
"""

from __future__ import annotations

import argparse
import os
import sys

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16",
          "bfloat16": "bfloat16", "fp64": "float64", "float64": "float64"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Convert a reference Linearizer checkpoint to a diffusers pipeline.")
    parser.add_argument("--checkpoint_path", required=True, help="the reference's models/model.pth")
    parser.add_argument("--args_json", default=None, help="its args.json (default: beside the models/ folder)")
    parser.add_argument("--dump_path", required=True, help="output directory of the pipeline")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights dtype of the saved pipeline")
    parser.add_argument("--solver", default=None, choices=["euler", "heun", "rk4", "reference_rk"],
                        help="scheduler solver (default: from args.json sampling_method; rk → reference_rk)")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="also upload to this Hub repo id")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # run from a source checkout without installing
        sys.path.insert(0, root)
    import torch

    from diffusers_linearizer.conversion.convert import convert_reference_checkpoint
    from diffusers_linearizer.conversion.export import save_converted_pipeline

    if not os.path.isfile(args.checkpoint_path):
        print(f"error: checkpoint not found: {args.checkpoint_path!r}", file=sys.stderr)
        return 2
    try:
        conversion = convert_reference_checkpoint(args.checkpoint_path, args.args_json, solver=args.solver)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in conversion.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    save_converted_pipeline(conversion, args.dump_path, dtype=getattr(torch, DTYPES[args.dtype]),
                            push_to_hub=args.push_to_hub)
    cfg = conversion.model.config
    print(f"Converted {conversion.source['tensors']} tensors ({cfg.in_channels}×{cfg.sample_size}×{cfg.sample_size}, "
          f"{cfg.num_blocks} flow blocks, rank-{cfg.core_rank} core; solver {conversion.scheduler.config.solver!r}) "
          f"→ {args.dump_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
