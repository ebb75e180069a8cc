"""Class and text conditions of the Linearizer pipelines, and classifier-free guidance that still collapses.

Only the core is conditioned, ``A(t, c)``; the guided prediction ``(1 + w)·A(t, c) z − w·A(t, c⁻) z`` is linear
in ``z``, so a guided run collapses into one operator ``B(c, w)`` (``models/conditional_cores.py``), cached by
the scheduler per ``(condition, negative condition, w)``. The arguments follow diffusers' conventions:

* class models (``DiTPipeline``): ``class_labels`` (ids or names; :meth:`get_label_ids`, ``id2label``,
  ``labels``), ``negative_class_labels`` (default the learned null class ∅);
* text models (``StableDiffusionPipeline``): ``prompt`` / ``prompt_embeds``, ``negative_prompt`` /
  ``negative_prompt_embeds`` (default the empty prompt), :meth:`encode_prompt` with the pipeline's
  ``text_encoder`` and ``tokenizer``; embeddings here are *pooled*, shape ``(N, condition_dim)``;
* ``guidance_scale`` ``s``: ``w = s − 1``; guidance is on for ``s > 1`` as in diffusers (``0`` and ``1`` are off).

A batch may mix conditions: samples are grouped by ``(c, c⁻)`` and each group gets its own ``B``.
Every check runs before any work.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ...models.conditional_cores import condition_key, guided_forward

#: ``guidance_scale`` of conditional models when none is given (``w = 3``: the lowest FD in ``docs/guidance.md``)
DEFAULT_GUIDANCE_SCALE = 4.0
CONDITION_ARGS = ("class_labels", "negative_class_labels", "prompt", "negative_prompt", "prompt_embeds",
                  "negative_prompt_embeds")


def guidance_weight(guidance_scale) -> float:
    """``w = guidance_scale − 1`` when guidance is on (``guidance_scale > 1``), else 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.number)) \
            or not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number ≥ 0 (> 1 turns guidance on), got {guidance_scale!r}.")
    return float(guidance_scale) - 1.0 if guidance_scale > 1 else 0.0


def describe_kind(kind: Optional[str]) -> str:
    return "unconditional" if kind is None else f"{kind}-conditioned"


def pooled_text_embeddings(tokenizer, text_encoder, texts: List[str], device) -> torch.Tensor:
    """Pooled embeddings ``(N, condition_dim)`` of ``texts`` (float32): the encoder's ``text_embeds`` (a
    ``…WithProjection`` model) or ``pooler_output``, of tokens padded to the shorter of the tokenizer's and the
    encoder's length limits. What the pipelines' ``encode_prompt`` and caption training both use."""
    limit = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                int(getattr(text_encoder.config, "max_position_embeddings", 77)))
    ids = tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
    out = text_encoder(ids.to(text_encoder.device))
    pooled = getattr(out, "text_embeds", None)
    pooled = out.pooler_output if pooled is None else pooled
    return pooled.to(device=device, dtype=torch.float32)


class ConditionalPipelineMixin:
    """Conditions and guided operators shared by every Linearizer pipeline.

    ``_model_kinds``: the kinds of model (``None``, ``"class"``, ``"text"``) a pipeline class serves; the
    generation pipelines serve one kind each (their ``__call__`` takes exactly that kind's arguments), the
    inversion pipeline all three. The kind-specific parts are :class:`ClassConditionMixin` and
    :class:`TextConditionMixin`.
    """

    _model_kinds: Tuple[Optional[str], ...] = (None, "class", "text")

    def check_model_kind(self) -> None:
        """Refuse a linearizer whose kind this pipeline class does not serve, naming the class that does."""
        linearizer = getattr(self, "linearizer", None)
        if linearizer is None or not hasattr(linearizer, "config"):
            return
        from . import pipeline_class_for  # the table of classes lives beside them
        from ..tasks import check_task, task_of

        task = next(filter(None, map(task_of, type(self).__mro__)), None)  # its own task, or its registered base's
        if task is not None:
            check_task(linearizer, task, type(self).__name__)
        kind = self.conditioning
        if kind not in self._model_kinds:

            raise ValueError(
                f"{type(self).__name__} is for {' or '.join(describe_kind(k) for k in self._model_kinds)} models, but "
                f"this linearizer is {describe_kind(kind)}: use {pipeline_class_for(kind).__name__} (or load with "
                "LinearizerPipeline.from_pretrained, which picks the class from the saved model)."
            )

    @property
    def conditioning(self) -> Optional[str]:
        """``None``, ``"class"`` or ``"text"`` (the model's)."""
        return getattr(self.linearizer.config, "conditioning", None)

    def _check_condition_args(self, kwargs: Dict, w: float) -> None:
        """Which condition arguments this model accepts; the rules of diffusers' pipelines."""
        given = [k for k in CONDITION_ARGS if kwargs.get(k) is not None]
        kind = self.conditioning
        if kind is None:
            if given or w != 0.0:
                what = ", ".join(given) if given else "guidance_scale > 1"
                raise ValueError(f"This model is unconditional: {what} does not apply (it takes no condition).")
            return
        wrong = [k for k in given if ("class" in k) != (kind == "class")]
        if wrong:
            use = "class_labels" if kind == "class" else "prompt or prompt_embeds"
            raise ValueError(f"This model is {kind}-conditioned: pass {use}, not {', '.join(wrong)}.")
        for a, b in (("prompt", "prompt_embeds"), ("negative_prompt", "negative_prompt_embeds")):
            if kwargs.get(a) is not None and kwargs.get(b) is not None:
                raise ValueError(f"Give either {a} or {b}, not both.")
        negatives = [k for k in given if k.startswith("negative")]
        if negatives and w == 0.0:
            raise ValueError(f"{', '.join(negatives)} only act with guidance: pass guidance_scale > 1 "
                             f"(default {DEFAULT_GUIDANCE_SCALE}), or leave them out.")
        if kind == "text" and (kwargs.get("prompt") is not None or kwargs.get("negative_prompt") is not None):
            if getattr(self, "text_encoder", None) is None or getattr(self, "tokenizer", None) is None:
                raise ValueError("prompt / negative_prompt need the pipeline's text_encoder and tokenizer; pass "
                                 "prompt_embeds instead, or build the pipeline with both.")
        if kind == "text" and kwargs.get("prompt") is None and kwargs.get("prompt_embeds") is None:
            raise ValueError("This model is text-conditioned: pass prompt (or prompt_embeds).")

    def resolve_guidance(self, guidance_scale) -> float:
        """``w`` of ``guidance_scale`` (``None``: :data:`DEFAULT_GUIDANCE_SCALE` for conditional models); the scale
        is kept as ``_guidance_scale`` (diffusers' convention: a callback may change it between steps)."""
        if guidance_scale is None:
            guidance_scale = DEFAULT_GUIDANCE_SCALE if self.conditioning is not None else 1.0
        w = guidance_weight(guidance_scale)
        self._guidance_scale = float(guidance_scale)
        return w

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the current (or last) call, as diffusers' pipelines expose it."""
        return getattr(self, "_guidance_scale", 1.0)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1

    def condition_batch_size(self, kwargs: Dict) -> Optional[int]:
        """The batch size the conditions imply (a list of labels or prompts, or embeddings), else ``None``."""
        for k in ("class_labels", "prompt"):
            v = kwargs.get(k)
            if isinstance(v, (list, tuple)) or (isinstance(v, torch.Tensor) and v.ndim == 1):
                if len(v) == 0:
                    raise ValueError(f"{k} is empty; pass one or more {'class ids or names' if 'class' in k else 'prompts'}.")
                return len(v)
        v = kwargs.get("prompt_embeds")
        return v.shape[0] if isinstance(v, torch.Tensor) and v.ndim == 2 else None

    def _per_sample(self, values: list, n: int, name: str) -> list:
        if len(values) == 1:
            return values * n
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for batch_size {n}; give one, or one per image.")
        return values


    def prepare_conditions(self, kwargs: Dict, batch_size: int, w: float, device=None) -> Optional[Tuple[list, list]]:
        """``(conditions, negatives)``, one per image (ids, or pooled embeddings ``(condition_dim,)``), or ``None``
        for an unconditional model (the kind's part: :class:`ClassConditionMixin`, :class:`TextConditionMixin`)."""
        kind = self.conditioning
        if kind is None:
            return None
        if kind == "class":
            return self._class_conditions(kwargs, batch_size)
        return self._text_conditions(kwargs, batch_size, w, device)

    # -------------------------------------------------------------- guided operators
    def guided_view(self, condition, negative, w: float, blend=None):
        """The core-like view whose collapse is ``B(c, w)`` (``blend``: an interpolation of conditions)."""
        return self.linearizer.guided_core(condition, negative, w, blend=blend)

    def condition_groups(self, conditions: Optional[Tuple[list, list]], n: int) -> List[Tuple[object, object, List[int]]]:
        """``[(c, c⁻, indices), …]``: the images that share one ``B(c, w)`` (one group ``(None, None, all)`` for
        unconditional models)."""
        if conditions is None:
            return [(None, None, list(range(n)))]
        groups: Dict[tuple, Tuple[object, object, List[int]]] = {}
        for i, (c, neg) in enumerate(zip(*conditions)):
            key = (condition_key(c), None if neg is None else condition_key(neg))
            groups.setdefault(key, (c, neg, []))[2].append(i)
        return list(groups.values())

    def guided_prediction(self, latents: torch.Tensor, t: float, conditions, w: float) -> torch.Tensor:
        """``A_t z`` (unconditional) or ``(1 + w)·A(t, c) z − w·A(t, c⁻) z`` per image, by the core's forward
        (two core evaluations per stage when guided: what a stepped classifier-free-guidance sampler costs)."""
        if conditions is None:
            return self.linearizer.apply_core(latents, t)
        self.linearizer.check_sample(latents, "latent")
        mix = [(1.0, conditions[0])] if w == 0.0 else [(1.0 + w, conditions[0]), (-w, conditions[1])]
        return guided_forward(self.linearizer.core, latents.flatten(1), t, mix).view_as(latents)


class ClassConditionMixin:
    """Class conditions with ``DiTPipeline``'s conventions: ``class_labels`` as ids or names, ``id2label``,
    ``labels``, :meth:`get_label_ids`; the negative class defaults to the learned null class ∅."""

    @property
    def num_classes(self) -> int:
        return int(getattr(self.linearizer.config, "num_classes", 0) or 0)

    @property
    def id2label(self) -> Dict[int, str]:
        """Class id → name (the model's ``id2label``; ``str(id)`` for unnamed classes)."""
        names = getattr(self.linearizer.config, "id2label", None) or {}
        return {i: str(names.get(str(i), names.get(i, str(i)))) for i in range(self.num_classes)}

    @property
    def labels(self) -> Dict[str, int]:
        """Name → id, every comma-separated synonym of ``id2label`` included (sorted, as ``DiTPipeline.labels``)."""
        out = {}
        for i, value in self.id2label.items():
            for name in value.split(","):
                out[name.strip()] = i
        return dict(sorted(out.items()))

    def get_label_ids(self, label) -> List[int]:
        """Class names (a string or a list of them) → ids; an unknown name is a ValueError listing the names."""
        if self.conditioning != "class":
            raise ValueError(f"get_label_ids needs a class-conditioned model; this one is {describe_kind(self.conditioning)}.")
        names = [label] if isinstance(label, str) else list(label)
        labels = self.labels
        for name in names:
            if name not in labels:
                raise ValueError(f"Unknown class name {name!r}; this model's classes are: {', '.join(map(repr, labels))}.")
        return [labels[name] for name in names]


    def _class_ids(self, labels, name: str) -> List[int]:
        """``labels`` (an id, a name, or a list / tensor of them) as a list of ids in ``[0, num_classes)``."""
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.ndim > 1:
                raise ValueError(f"{name} as a tensor must hold integer ids, shape (N,); got {labels.dtype} {tuple(labels.shape)}.")
            labels = labels.reshape(-1).tolist()
        items = labels if isinstance(labels, (list, tuple)) else [labels]
        if not items:
            raise ValueError(f"{name} is empty; pass class ids or names.")
        ids = []
        for item in items:
            if isinstance(item, str):
                ids.extend(self.get_label_ids(item))
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < self.num_classes:
                    raise ValueError(f"{name}: class id {int(item)} is out of range; this model has {self.num_classes} "
                                     f"classes, ids 0 … {self.num_classes - 1} ({self._names()}).")
                ids.append(int(item))
            else:
                raise ValueError(f"{name} must hold class ids (int) or names (str), got {type(item).__name__}.")
        return ids

    def _names(self) -> str:
        return ", ".join(f"{i}: {n}" for i, n in self.id2label.items())


    def _class_conditions(self, kwargs: Dict, batch_size: int) -> Tuple[list, list]:
        """Class ids and negative ids per image; without ``class_labels`` the classes in turn."""
        labels = kwargs.get("class_labels")
        ids = self._class_ids(labels, "class_labels") if labels is not None else \
            [i % self.num_classes for i in range(batch_size)]
        conds = self._per_sample(ids, batch_size, "class_labels")
        neg = kwargs.get("negative_class_labels")
        null = self.num_classes
        negs = self._per_sample(self._class_ids(neg, "negative_class_labels") if neg is not None else [null],
                                batch_size, "negative_class_labels")
        return conds, negs


class TextConditionMixin:
    """Text conditions with ``StableDiffusionPipeline``'s conventions: ``prompt`` / ``prompt_embeds``,
    ``negative_prompt`` / ``negative_prompt_embeds`` and :meth:`encode_prompt` with the pipeline's ``text_encoder``
    and ``tokenizer``; the embeddings are *pooled*, ``(N, condition_dim)``."""

    def _pooled(self, texts: List[str], device) -> torch.Tensor:
        return pooled_text_embeddings(self.tokenizer, self.text_encoder, texts, device)

    def _check_embeds(self, embeds: torch.Tensor, name: str) -> torch.Tensor:
        dim = int(self.linearizer.config.condition_dim)
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.ndim != 2 \
                or embeds.shape[1] != dim:
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must be pooled text embeddings of shape (N, {dim}), got {got}.")
        return embeds

    @torch.no_grad()
    def encode_prompt(self, prompt=None, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None,
                      prompt_embeds: Optional[torch.Tensor] = None, negative_prompt_embeds: Optional[torch.Tensor] = None):
        """``(prompt_embeds, negative_prompt_embeds)``: pooled text embeddings ``(N·num_images_per_prompt,
        condition_dim)`` of ``prompt`` (a string or a list) and of ``negative_prompt`` (default the empty prompt
        ``""``, as in diffusers); ``negative_prompt_embeds`` is ``None`` without guidance. Given embeddings are
        used as they are."""
        if self.conditioning != "text":
            raise ValueError("encode_prompt needs a text-conditioned model.")
        device = device if device is not None else self._execution_device
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self._pooled(texts, device)
        prompt_embeds = self._check_embeds(prompt_embeds, "prompt_embeds").to(device)
        n = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = negative_prompt if negative_prompt is not None else ""
            texts = [negative] * n if isinstance(negative, str) else list(negative)
            if len(texts) != n:
                raise ValueError(f"negative_prompt has {len(texts)} entries for {n} prompts.")
            negative_prompt_embeds = self._pooled(texts, device)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = self._check_embeds(negative_prompt_embeds, "negative_prompt_embeds").to(device)
        repeat = (lambda e: None if e is None else e.repeat_interleave(num_images_per_prompt, dim=0))
        return repeat(prompt_embeds), repeat(negative_prompt_embeds)


    def _text_conditions(self, kwargs: Dict, batch_size: int, w: float, device) -> Tuple[list, list]:
        """Pooled embeddings and negative embeddings per image (``None`` negatives without guidance)."""
        embeds, negative = self.encode_prompt(
            kwargs.get("prompt"), device=device, do_classifier_free_guidance=w != 0.0,
            negative_prompt=kwargs.get("negative_prompt"), prompt_embeds=kwargs.get("prompt_embeds"),
            negative_prompt_embeds=kwargs.get("negative_prompt_embeds"))
        conds = self._per_sample(list(embeds), batch_size, "prompt")
        negs = self._per_sample(list(negative), batch_size, "negative_prompt") if negative is not None else [None] * batch_size
        return conds, negs
