"""``diffusers-linearizer analyze MODEL -o DIR``: the analysis report of a model (:mod:`.analysis.report`).

Writes ``DIR/report.md``, ``DIR/report.json`` and ``DIR/local_components.png``: local components next to the
core's global singular directions, inverse stability in float32/float64 on data and out-of-distribution
families, typicality of inversions with AUROCs, and the fibers of the core, each with its cost.
"""

from __future__ import annotations

import os
import sys

__all__ = ["add_parser", "cmd_analyze"]


def add_parser(sub) -> None:
    """The ``analyze`` sub-command on the parser's sub-parsers ``sub``."""
    from .cli_checks import POSITIVE, STEPS
    from .schedulers import SOLVERS

    p = sub.add_parser(
        "analyze",
        help="Write an analysis report of a model: local components, inverse stability, typicality, fibers.",
        description="Analyse a Linearizer: top singular directions of the one-step generator's Jacobian at a point, "
        "round-trip errors and Lipschitz constants of the inverse (float32 and float64, data and out-of-"
        "distribution inputs), cond(B) and ‖B†‖, bits/dim and the χ² test of recovered noise with AUROCs, and the "
        "rank strata of the core's factors. Writes DIR/report.md, DIR/report.json and DIR/local_components.png.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="A saved pipeline directory, a packaged model (fashion-mnist, fashion-mnist-classes) or a Hub "
                   "repo id. Default: the packaged model.")
    p.add_argument("--output", "-o", default="analysis", metavar="DIR",
                   help="Folder of the report (created; existing report files are replaced). Default: analysis.")
    p.add_argument("--steps", type=STEPS, default=100, help="Sampler grid points T of the analysed B. Default: 100.")
    p.add_argument("--solver", choices=SOLVERS, default=None, help="Solver of B. Default: the saved scheduler's.")
    p.add_argument("--k", type=POSITIVE, default=4, help="Local components and global directions shown. Default: 4.")
    p.add_argument("--num-images", type=POSITIVE, default=8,
                   help="Data images, and inputs per out-of-distribution family. Default: 8.")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="Class-conditioned models: the class whose B(c) is analysed. Default: the first class.")
    p.add_argument("--seed", type=POSITIVE, default=0, help="Seed of the noise point and the families. Default: 0.")
    p.add_argument("--device", default=None, help="Torch device. Default: cpu.")
    p.add_argument("--threads", type=POSITIVE, default=None,
                   help="torch CPU threads (on a busy machine 1 can be several times faster). Default: torch's.")


def fashion_mnist_test(model, n: int):
    """``(images, labels, name)``: the first ``n`` Fashion-MNIST test images when the dataset is installed and the
    model takes 1×32×32 images, else ``(None, None, None)`` (the report then uses the model's own samples)."""
    if tuple(model.sample_shape) != (1, 32, 32):
        return None, None, None
    import torch

    from .training.data import FASHION_MNIST_DIR, FashionMNIST

    if not os.path.isdir(FASHION_MNIST_DIR):
        return None, None, None
    try:
        data = FashionMNIST(split="test", return_labels=True, max_samples=n)
    except (OSError, ValueError):
        return None, None, None
    xs, ys = zip(*(data[i] for i in range(len(data))))
    return torch.stack(xs), torch.as_tensor(ys), "Fashion-MNIST test images"


def cmd_analyze(args) -> int:
    from .cli import load_pipeline
    from .cli_checks import check_device, check_output_folder

    check_device(args.device)
    check_output_folder(args.output, "--output", "report")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, "float32")
    pipe.to(args.device or "cpu")
    pipe.set_progress_bar_config(disable=True)
    model = pipe.linearizer
    if args.k > model.latent_dim:
        raise ValueError(f"--k {args.k} is larger than the model's dimension D = {model.latent_dim}.")
    condition = None
    if args.class_name is not None:
        if model.conditioning != "class":
            raise ValueError("--class needs a class-conditioned model.")
        condition = pipe._class_ids([int(args.class_name) if args.class_name.isdigit() else args.class_name],
                                    "--class")[0]
    from .analysis import analyze

    images, labels, name = fashion_mnist_test(model, args.num_images)
    report = analyze(pipe, args.output, num_inference_steps=args.steps, solver=args.solver, k=args.k,
                     num_images=args.num_images, condition=condition, seed=args.seed, images=images, labels=labels,
                     data_name=name)
    st = report["stability"]
    print(f"cond(B) = {st['operator']['cond']:.3g}, ‖B†‖ = {st['operator']['pinv_norm']:.3g}; exploding inverses: "
          f"{', '.join(st['exploding']) or 'none'}")
    aurocs = {k: v["auroc_z"] for k, v in report["typicality"].items() if v["auroc_z"] is not None}
    print("typicality AUROC (χ² z) vs data: " + ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items()))
    print(f"wrote {os.path.join(args.output, 'report.md')} in {report['costs_s']['total']:.1f} s", file=sys.stderr)
    return 0
