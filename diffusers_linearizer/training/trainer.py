"""The training loop as a class whose steps can be called one by one.

:class:`Trainer` builds everything in ``__init__`` (accelerator, data, model, objective, optimizer, and the
state of a resumed run); :meth:`Trainer.train` is the loop. Each part of a step is a method that can be
called directly or overridden in a subclass: :meth:`~Trainer.step` (one optimizer step, all its
micro-batches), :meth:`~Trainer.update_ema`, :meth:`~Trainer.log_losses`, :meth:`~Trainer.save_checkpoint`
(which writes with :meth:`~Trainer.write_checkpoint` and publishes with :meth:`~Trainer.publish_checkpoint`),
:meth:`~Trainer.write_samples` and :meth:`~Trainer.save_final`. Wall-clock time is read through
:meth:`~Trainer.clock`.

What the methods are built from lives in :mod:`.setup`, :mod:`.device_inputs`, :mod:`.checkpoints`,
:mod:`.checkpoint_state` (what a checkpoint holds, checked before resuming) and :mod:`.outputs`.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from typing import Any, Dict, Iterable, Iterator, Optional

import torch

from ..analysis.fibers import rank_collapse_check
from ..atomic import write_json_atomic
from .checkpoints import checkpoint_root, register_model_folders, remove_stale
from .device_inputs import apply_kernel_options
from .trainer_checkpoints import CheckpointingMixin
from .ema import EMA
from .objective_registry import mix_needs, parse_objective, weighted_terms
from .outputs import generate_samples, save_final, save_sample_grid
from .setup import build_optimizer, initialize_model, load_dataset, make_accelerator, make_loader, use_fused_optimizer

class Trainer(CheckpointingMixin):
    """Trains a ``LinearizerModel`` as configured by the options of :func:`~.arguments.add_arguments`.

    ``Trainer(args)`` loads the data first (a missing dataset fails before anything is written), builds
    the model and its objective, and, with ``--resume_from_checkpoint``, loads the checkpoint: afterwards
    :attr:`global_step` is the step the run continues from. ``args`` must have passed
    :func:`~.arguments.check_args`.
    """

    def __init__(self, args):
        from accelerate.logging import get_logger

        self.args = args
        self.output_dir = output_dir = os.path.abspath(args.output_dir)
        self.accelerator = make_accelerator(args, output_dir)
        self.logger = get_logger("diffusers_linearizer.train")
        self.main_process = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.num_processes, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.ckpt_root = checkpoint_root(output_dir)
        # the state of the loop
        self.global_step = 0
        self.micro_step = 0  # micro-batches trained, over all runs
        self.steps_this_run = 0
        self.step_inputs = None  # the random inputs of the current optimizer step (see draw_step_inputs)
        self.device_data = None  # the dataset on the device (--device_inputs; see prepare_data)
        self.step_gen = None  # the generator of the step inputs, reseeded every step
        self.step_terms: Dict[str, Any] = {}
        self.running: Dict[str, Any] = {}
        self.running_n = 0
        self.last_logs: Dict[str, float] = {}
        self.progress = None
        self.sample_warned = False
        self.t_start = self.clock()

        self.prepare_data()
        self.build_model()
        self.build_objective()
        self.resume()
        if self.main_process:
            os.makedirs(output_dir, exist_ok=True)
            write_json_atomic(os.path.join(output_dir, "training_args.json"), dict(vars(args), command=None))
        if args.report_to == "tensorboard":
            tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("linearizer", config=tracker_config)

    # ------------------------------------------------------------------ setup
    def say(self, msg: str) -> None:
        """A message on stderr, from the main process only."""
        if self.main_process:
            print(msg, file=sys.stderr, flush=True)

    def clock(self) -> float:
        """Seconds on a monotonic clock: what ``--max_train_seconds`` and the recorded training time measure."""
        return time.perf_counter()

    def load_dataset(self):
        """The training set of ``args`` (images or teacher pairs); override to train on something else."""
        return load_dataset(self.args)

    def prepare_data(self) -> None:
        """The dataset (images or teacher pairs), its resumable sampler and the per-process loader; with
        ``--device_inputs`` the dataset on the device as well (:class:`~.device_inputs.DeviceData`)."""
        from .device_inputs import DeviceData, use_device_inputs

        args = self.args
        dataset = self.load_dataset()
        self.uses_likelihood = mix_needs(parse_objective(args.objective), "needs_uniform")  # dequantisation noise
        self.text = None  # (tokenizer, frozen text encoder) with --conditioning text
        if args.conditioning == "text":
            from .conditions import load_text_encoder, pooled_dim

            tokenizer, encoder = load_text_encoder(args.text_encoder)
            self.text = (tokenizer, encoder.to(self.device))
            dataset.model_config["condition_dim"] = pooled_dim(encoder)
        self.dataset = dataset
        self.shape = (dataset.channels, args.resolution, args.resolution)
        self.global_batch = args.train_batch_size * self.num_processes
        if len(dataset) < self.global_batch:
            fits = len(dataset) // self.num_processes
            raise ValueError(
                f"The dataset has {len(dataset)} images, fewer than one global batch "
                f"({args.train_batch_size} per process × {self.num_processes} processes): lower --train_batch_size "
                f"to at most {fits}" + (" (or run fewer processes)" if self.num_processes > 1 else "") + ", or add images."
                if fits >= 1 else f"The dataset has {len(dataset)} images, fewer than the {self.num_processes} processes "
                "of this run: add images or run fewer processes."
            )
        if self.main_process:
            os.makedirs(self.ckpt_root, exist_ok=True)
            remove_stale(self.ckpt_root)
        self.accelerator.wait_for_everyone()
        self.sampler, self.loader = make_loader(args, dataset, self.device.type == "cuda")
        self.device_inputs = use_device_inputs(args.device_inputs, self.device, dataset)
        if self.device_inputs:
            self.device_data = DeviceData(dataset, self.loader.collate_fn, self.sampler, args.train_batch_size,
                                          self.device, self.num_processes, self.rank)

    def build_model(self) -> None:
        """The model (same initial weights in every process, float32, ActNorm initialised) and its EMA."""
        args = self.args
        self.model = initialize_model(args, self.dataset, self.device)
        apply_kernel_options(args, self.model)  # --allow_tf32, --cudnn_benchmark, --channels_last
        self.ema = None if args.no_ema else EMA(self.model, args.ema_decay, warmup=not args.no_ema_warmup)

    def build_objective(self) -> None:
        """The objective around the model, the optimizer and the LR schedule, prepared by accelerate; the
        checkpoint hooks that save the model (and its EMA) as ``save_pretrained`` folders."""
        from .objective import LinearizerObjective

        args = self.args
        objective = LinearizerObjective(
            self.model, args.objective, noise_level=args.noise_level, pixel_loss=args.pixel_loss,
            ssim_weight=args.ssim_weight, weights={t: getattr(args, f"weight_{t}") for t in weighted_terms()},
            num_inference_steps=args.sample_inference_steps, solver=args.solver,
        )
        if args.compile:
            objective.compile_flow(backend=args.compile_backend, mode=args.compile_mode)
        optimizer, lr_scheduler, self.max_train_steps = build_optimizer(
            args, self.model, len(self.dataset), self.num_processes, fused=use_fused_optimizer(args.fused_optimizer, self.device))
        self.objective, self.optimizer, self.loader, self.lr_scheduler = self.accelerator.prepare(
            objective, optimizer, self.loader, lr_scheduler)
        self.micro_per_epoch = len(self.device_data) if self.device_data is not None else len(self.loader)
        register_model_folders(self.accelerator, self.ema)  # the model, its EMA weights and the EMA's state

    def unwrapped(self):
        """The trained ``LinearizerModel`` (outside accelerate's wrappers)."""
        return self.accelerator.unwrap_model(self.objective).model

    # ------------------------------------------------------------------ one optimizer step
    def micro_batches(self) -> Iterator:
        """This process's micro-batches from the current position on, epoch after epoch: the order depends
        only on ``(seed, epoch)``, and the batches a resumed run already consumed are skipped."""
        epoch, skip = divmod(self.micro_step, self.micro_per_epoch)
        while self.device_data is not None:
            yield from self.device_data.batches(epoch, skip)
            epoch, skip = epoch + 1, 0
        while True:
            self.sampler.set_epoch(epoch)
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            yield from (self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader)
            epoch, skip = epoch + 1, 0

    def draw_step_inputs(self, step: int) -> list:
        """The random inputs of optimizer step ``step`` for all processes and micro-batches at once, from one
        generator seeded by ``(seed, step)``: noise, times and perturbations (``draw_step_noise``), flips
        (used with ``--random_flip``) and, when the likelihood is in the objective, dequantisation noise.
        Each micro-batch of each process takes its slice, so P processes × A accumulation steps see the
        noise one process with batch P·A·B would. The generator is the CPU's, or the training device's
        with ``--device_inputs`` (:func:`~.device_inputs.step_generator`)."""
        from .device_inputs import step_generator
        from .objective import draw_step_noise

        device = self.device if self.device_inputs else torch.device("cpu")
        gen = self.step_gen = step_generator(device, self.args.seed, step, self.step_gen)
        n_step = self.global_batch * self.args.gradient_accumulation_steps
        inputs = list(draw_step_noise(self.shape, n_step, gen))
        inputs.append(torch.rand(n_step, generator=gen, device=gen.device) < 0.5)
        if self.uses_likelihood:
            inputs.append(torch.rand((n_step, *self.shape), generator=gen, device=gen.device))
        if self.args.conditioning:  # condition dropout
            inputs.append(torch.rand(n_step, generator=gen, device=gen.device) < self.args.condition_dropout)
        return inputs

    def conditions(self, conds, drop):
        """Condition dropout on a micro-batch's class ids or captions, then ids (on the device) or pooled
        caption embeddings."""
        from .conditions import drop_conditions, encode_captions

        conds = drop_conditions(conds, drop, self.model.config.num_classes)
        return conds.to(self.device) if self.text is None else encode_captions(*self.text, conds, self.device)

    def train_micro_batch(self, images) -> bool:
        """Forward and backward on one micro-batch (images, or teacher pairs whose noise replaces the drawn
        noise); the optimizer steps on the last micro-batch of a step. True when it did."""
        args, accelerator = self.args, self.accelerator
        accumulation = args.gradient_accumulation_steps
        micro_in_step = self.micro_step % accumulation
        if micro_in_step == 0 or self.step_inputs is None:
            self.step_inputs = self.draw_step_inputs(self.global_step)
        first = (micro_in_step * self.num_processes + self.rank) * args.train_batch_size
        noise, t, eps_y, eps_x, flip, *rest = (v[first:first + args.train_batch_size] for v in self.step_inputs)
        uniform = rest[0].to(self.device, non_blocking=True) if self.uses_likelihood else None
        condition = None
        if args.conditioning and not args.teacher_pairs:  # (images, ids or captions)
            images, condition = images
            condition = self.conditions(condition, rest[-1])
        elif isinstance(images, (tuple, list)):  # teacher pairs: the pair's noise replaces the drawn one
            images, noise, *ids = images  # style pairs: (stylised, content, style ids); class pairs: their ids
            condition = ids[0].to(self.device) if ids else None
        if args.random_flip:
            images = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
        noise, t, eps_y, eps_x = (v.to(self.device, non_blocking=True) for v in (noise, t, eps_y, eps_x))
        images = images.to(self.device)
        # position of this micro-batch's first sample in the global sample stream (the fast objective's
        # round-robin assignment of decode terms continues across batches, processes and steps)
        offset = self.global_step * accumulation * self.global_batch + first
        with accelerator.accumulate(self.objective):
            out = self.objective(images, noise, t, eps_y, eps_x, offset=offset, uniform=uniform, condition=condition)
            accelerator.backward(out["loss"])
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.objective.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        for k, v in out.items():  # device tensors: no host sync per micro-step
            self.step_terms[k] = self.step_terms.get(k, 0.0) + v.detach().double() / accumulation
        self.micro_step += 1
        return accelerator.sync_gradients

    def step(self, batches: Iterable) -> int:
        """One optimizer step: trains on micro-batches taken from ``batches`` (an iterator such as
        :meth:`micro_batches`, or a list of ``--gradient_accumulation_steps`` micro-batches) until the
        optimizer has stepped, then updates the EMA and the running losses. Returns the new step number."""
        batches = iter(batches)
        while True:
            images = next(batches, None)
            if images is None:
                raise ValueError("The micro-batches ran out in the middle of an optimizer step.")
            if self.train_micro_batch(images):
                break
        self.global_step += 1
        self.steps_this_run += 1
        self.update_ema()
        for k, v in self.step_terms.items():
            self.running[k] = self.running.get(k, 0.0) + v
        self.running_n += 1
        self.step_terms = {}
        if self.progress is not None:
            self.progress.update(1)
        return self.global_step

    def update_ema(self) -> None:
        """Move the EMA towards the current weights (nothing with ``--no_ema``)."""
        if self.ema is not None:
            self.ema.update(self.unwrapped())

    def log_losses(self) -> Dict[str, float]:
        """Log the losses averaged over the steps since the last log (and over processes), the learning
        rate and the speed; returns them."""
        keys = sorted(self.running)
        local = torch.stack([torch.as_tensor(self.running[k], device=self.device, dtype=torch.float64) / self.running_n
                             for k in keys])
        mean = self.accelerator.reduce(local, reduction="mean") if self.num_processes > 1 else local
        logs = {f"loss/{k}" if k != "loss" else "loss": float(v) for k, v in zip(keys, mean.tolist())}
        logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        logs["steps_per_second"] = self.steps_this_run / max(self.clock() - self.t_start, 1e-9)
        self.accelerator.log(logs, step=self.global_step)
        line = f"step {self.global_step}: " + ", ".join(f"{k}={v:.5g}" for k, v in logs.items())
        self.logger.info(line)
        rank_line, self._core_ranks = rank_collapse_check(self.unwrapped().core, getattr(self, "_core_ranks", None))
        (self.logger.warning if "RANK COLLAPSE" in rank_line else self.logger.info)(rank_line)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
        if self.args.no_progress:
            self.say(line)
        self.running, self.running_n, self.last_logs = {}, 0, logs
        return logs

    def after_step(self) -> None:
        """Logs, a checkpoint and samples, each when its interval divides the step just taken."""
        args, step = self.args, self.global_step
        if step % args.log_every == 0 or step == self.max_train_steps:
            self.log_losses()
        if args.checkpointing_steps and step % args.checkpointing_steps == 0:
            self.save_checkpoint(step)
        if args.sample_steps and step % args.sample_steps == 0:
            self.write_samples(step)

    def out_of_time(self) -> bool:
        """True once ``--max_train_seconds`` have passed; with several processes, as soon as any one of them
        is out of time, so that all stop at the same step."""
        if self.args.max_train_seconds is None:
            return False
        late = self.clock() - self.t_start >= self.args.max_train_seconds
        if self.num_processes > 1:  # a collective (a device sync) only where processes must agree
            late = bool(self.accelerator.reduce(torch.tensor(float(late), device=self.device), reduction="max").item())
        return late

    # ------------------------------------------------------------------ samples, the end
    def sampling_model(self):
        """An evaluation copy of the model with the EMA weights (the trained ones with ``--no_ema``)."""
        inner = self.unwrapped()
        twin = self.ema.averaged_copy(inner) if self.ema is not None else copy.deepcopy(inner)
        return twin.eval()

    def write_samples(self, step: int) -> None:
        """A grid of one-step samples in ``OUTPUT/samples/`` (and TensorBoard). A failure to sample is
        reported once and never stops training."""
        if self.main_process:
            try:
                images = generate_samples(self.sampling_model(), self.args.num_samples, self.args.sample_inference_steps,
                                          self.args.solver, self.args.seed, **self.sample_condition())
            except Exception as err:  # sampling must never stop training
                if not self.sample_warned:
                    self.say(f"WARNING: could not generate samples ({type(err).__name__}: {err}); continuing without.")
                    self.sample_warned = True
            else:
                grid = save_sample_grid(images, self.output_dir, step)
                for tracker in self.accelerator.trackers:
                    if tracker.name == "tensorboard":
                        tracker.writer.add_image("samples", grid, step)
        self.accelerator.wait_for_everyone()

    def sample_condition(self) -> Dict[str, Any]:
        """What sample grids are conditioned on: class models cycle through their classes by themselves; text
        models take the first captions of the data, unguided."""
        if self.args.conditioning != "text":
            return {}
        from .conditions import encode_captions

        n = self.args.num_samples
        captions = [self.dataset[i][1] for i in range(min(n, len(self.dataset)))]
        return dict(prompt_embeds=encode_captions(*self.text, (captions * n)[:n], self.device), guidance_scale=1.0)

    def save_final(self, elapsed: Optional[float] = None) -> None:
        """The end of a run: a checkpoint of the final state (a finished run can be extended), the last
        sample grid and the pipeline with the EMA weights in OUTPUT. ``elapsed``: the seconds trained in
        this run (default: since the loop started)."""
        args, step = self.args, self.global_step
        elapsed = self.clock() - self.t_start if elapsed is None else elapsed
        self.save_checkpoint(step)
        if not args.no_final_samples and not (args.sample_steps and step % args.sample_steps == 0):
            self.write_samples(step)
        if self.main_process:
            final_model = self.sampling_model()
            metrics = {
                "training_steps": step, "objective": args.objective, "pixel_loss": args.pixel_loss,
                "noise_level": args.noise_level, "global_batch_size": self.global_batch * args.gradient_accumulation_steps,
                "learning_rate": args.learning_rate, "ema_decay": None if self.ema is None else args.ema_decay,
                "dataset": args.train_data_dir or f"Fashion-MNIST ({args.fashion_mnist_mode} to {args.resolution}×{args.resolution})",
                "final_loss": self.last_logs.get("loss"), "mixed_precision": self.accelerator.mixed_precision,
                "num_processes": self.num_processes, "device": str(self.device), "train_seconds_this_run": round(elapsed, 1),
            }
            save_final(final_model, self.output_dir, args.solver, metrics, text=self.text)
            self.say(f"Saved the {'EMA' if self.ema is not None else 'trained'} pipeline to {self.output_dir} after "
                     f"{step} steps ({self.steps_this_run} in this run, {elapsed:.1f} s).")

    # ------------------------------------------------------------------ the loop
    def train(self) -> int:
        """Train to ``--max_train_steps`` (or the epochs, or the time budget), then :meth:`save_final`. Returns 0."""
        from tqdm.auto import tqdm

        args = self.args
        n_params = sum(p.numel() for p in self.unwrapped().parameters())
        self.say(
            f"Training {n_params:,} parameters on {len(self.dataset):,} images {self.shape} | {self.num_processes} "
            f"process(es) on {self.device} | batch {args.train_batch_size}×{self.num_processes}×"
            f"{args.gradient_accumulation_steps} | objective {args.objective} | mixed precision "
            f"{self.accelerator.mixed_precision} | inputs on the {'device' if self.device_inputs else 'host'}"
            f"{' | compiled' if args.compile else ''} | steps {self.global_step}→{self.max_train_steps}"
        )
        self.progress = tqdm(total=self.max_train_steps, initial=self.global_step, desc="train",
                             disable=args.no_progress or not self.main_process, dynamic_ncols=True)
        self.t_start = self.clock()
        batches = self.micro_batches()
        while self.global_step < self.max_train_steps:
            self.step(batches)
            self.after_step()
            if self.global_step >= self.max_train_steps or self.out_of_time():
                break
        self.progress.close()
        self.save_final(self.clock() - self.t_start)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return 0
