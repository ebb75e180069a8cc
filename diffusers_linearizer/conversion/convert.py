"""Map a checkpoint of the Linearizer paper's code onto a ``LinearizerModel`` and ``LinearizerScheduler``.

The checkpoint is read by :mod:`.safe_unpickle` (records, never the original classes). The reference's
one-step model is ``OneStepLinearizer(net_gx, linear_network, net_gy)`` with

* ``net_gx`` (``InverseUnet``) → ``g``: one ``InvUnet`` of blocks ``actnorm`` / ``F`` / ``G`` / ``mix``,
  each coupling conditioned by an EDM ``SongUNet`` (``F.cond.net``); ``net_gy`` is the same object, run
  with t = 0 where ``net_gx`` runs with t = 1 → our ``shared_g=True``, ``role_x=1``, ``role_y=0``;
* ``linear_network`` (``TimeDependentLoRALinearLayer``): ``A_t = A1 A2ᵀ`` applied to row vectors
  (``ẑ = z A_t``), ``A1 = lin1(t)``, ``A2 = lin2(t)`` reshaped row-major to ``D × r``. In our column
  convention the operator is ``A_tᵀ = A2 A1ᵀ = U Vᵀ``: ``u_mlp ← lin2``, ``v_mlp ← lin1``, ``a ≡ 0``.

Every tensor of the checkpoint lands in exactly one place of our state dict; anything our architecture
cannot express is refused with a ``ValueError`` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..models import LinearizerModel
from ..models.edm_unet import SKIP_SCALE, EDMBlock, EDMConv2d, EDMUNet, edm_conditioner
from ..schedulers import LinearizerScheduler
from .records import Record, get_path, module_children, module_tensors, record_state_dict
from .safe_unpickle import load_checkpoint

LINEAR_MODULES = ("TimeDependentLoRALinearLayer",)
G_TYPES = ("InverseUnet",)
SAMPLING_TO_SOLVER = {"euler": "euler", "rk": "reference_rk"}
REQUIRED_ARGS = ("in_ch", "img_size", "num_of_layers", "linear_lora_features")
ROLE_X, ROLE_Y = 1.0, 0.0  # the reference runs g_x with t = 1 and g_y with t = 0


@dataclass
class ReferenceConversion:
    """A converted checkpoint: the model, a scheduler with the reference's sampler settings and provenance."""

    model: LinearizerModel
    scheduler: LinearizerScheduler
    args: Dict[str, Any]
    source: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)
    mapping: Dict[str, str] = field(default_factory=dict)  # our key → reference key


# ---------------------------------------------------------------------- args.json
def find_args_json(checkpoint_path: str) -> str:
    """``args.json`` of the reference layout (``RUN/args.json`` beside ``RUN/models/model.pth``) or beside the file."""
    ckpt_dir = os.path.dirname(os.path.abspath(checkpoint_path))
    for candidate in (os.path.join(os.path.dirname(ckpt_dir), "args.json"), os.path.join(ckpt_dir, "args.json")):
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(
        f"No args.json found for {checkpoint_path!r} (looked in {os.path.dirname(ckpt_dir)!r} and {ckpt_dir!r}; the "
        "reference code saves it as RUN/args.json beside RUN/models/model.pth). Pass --args_json PATH."
    )


def read_reference_args(path: str) -> Dict[str, Any]:
    """Load and check the reference's training arguments; ``ValueError`` names any unsupported field."""
    if not os.path.isfile(path):
        raise ValueError(f"args.json not found: {path!r}.")
    try:
        with open(path, encoding="utf-8") as f:
            args = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read {path!r} as JSON: {err}") from err
    if not isinstance(args, dict):
        raise ValueError(f"{path!r} must hold a JSON object of training arguments, got {type(args).__name__}.")
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        raise ValueError(f"{path!r} lacks the field(s) {', '.join(missing)} needed to rebuild the model.")
    for key in REQUIRED_ARGS:
        if isinstance(args[key], bool) or not isinstance(args[key], int) or args[key] < 1:
            raise ValueError(f"args.json field {key!r} must be a positive integer, got {args[key]!r}.")
    checks = (
        ("linear_module", LINEAR_MODULES, "TimeDependentLoRALinearLayer"),
        ("g", G_TYPES, "InverseUnet"),
        ("sampling_method", tuple(SAMPLING_TO_SOLVER), "rk"),
    )
    for key, allowed, default in checks:
        value = args.get(key, default)
        if value not in allowed:
            raise ValueError(
                f"Unsupported configuration: args.json field {key!r} = {value!r}; this converter supports "
                f"{', '.join(map(repr, allowed))}."
            )
    if args.get("out_ch", args["in_ch"]) != args["in_ch"]:
        raise ValueError(f"Unsupported configuration: args.json field 'out_ch' = {args['out_ch']!r} differs from in_ch "
                         f"= {args['in_ch']!r} (the one-step model maps images to images of the same shape).")
    steps = args.get("steps", 100)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"Unsupported configuration: args.json field 'steps' = {steps!r} (an integer ≥ 2 is needed).")
    return args


# ---------------------------------------------------------------------- record helpers
def _need(record: Any, path: str, class_names: Tuple[str, ...], where: str) -> Record:
    if not isinstance(record, Record):
        raise ValueError(f"Unsupported checkpoint: {where} ({path}) is {type(record).__name__}, expected "
                         f"{' or '.join(class_names)}.")
    if record.class_name not in class_names:
        raise ValueError(f"Unsupported configuration: {path} is a {record.cls_path}; this converter supports "
                         f"{' or '.join(class_names)} there.")
    return record


def _attr(record: Record, name: str, path: str, default: Any = ...) -> Any:
    attrs = record.attrs
    if name not in attrs:
        if default is not ...:
            return default
        raise ValueError(f"Unsupported checkpoint: {path} has no attribute {name!r}.")
    return attrs[name]


def _expect(value: Any, expected: Any, path: str) -> None:
    same = math.isclose(value, expected, rel_tol=1e-12) if isinstance(expected, float) and isinstance(value, (int, float)) \
        else value == expected
    if not same:
        raise ValueError(f"Unsupported configuration: {path} = {value!r}; only {expected!r} can be converted.")


def _children(record: Record) -> List[Any]:
    return [c for _, c in sorted(module_children(record).items(), key=lambda kv: int(kv[0]))]


# ---------------------------------------------------------------------- SongUNet → EDMUNet
def _unet_key(key: str, res: int) -> str:
    """Reference SongUNet key → our EDMUNet key (the final norm/conv live outside ``dec`` in ours)."""
    for old, new in ((f"dec.{res}x{res}_aux_norm.", "out_norm."), (f"dec.{res}x{res}_aux_conv.", "out_conv.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _unet_hparams(unet: Record, path: str) -> Tuple[int, int]:
    """``(model_channels, blocks per level)`` of a SongUNet record."""
    enc = module_children(module_children(unet).get("enc"))
    conv = [k for k in enc if k.endswith("_conv")]
    if len(conv) != 1:
        raise ValueError(f"Unsupported configuration: {path}.enc has {len(conv)} input convolutions (expected one).")
    res = conv[0].split("x")[0]
    channels = _attr(enc[conv[0]], "out_channels", f"{path}.enc.{conv[0]}")
    layers = sum(1 for k in enc if k.startswith(f"{res}x{res}_block"))
    return int(channels), layers


def _check_unet(unet: Record, ours: EDMUNet, res: int, path: str) -> None:
    """Every behaviour-relevant attribute of the reference SongUNet equals what our EDMUNet does."""
    noise = _need(module_children(unet).get("map_noise"), f"{path}.map_noise", ("PositionalEmbedding",), "time embedding")
    _expect(_attr(noise, "endpoint", f"{path}.map_noise"), True, f"{path}.map_noise.endpoint")
    _expect(float(_attr(noise, "max_positions", f"{path}.map_noise")), 10000.0, f"{path}.map_noise.max_positions")
    _expect(_attr(noise, "num_channels", f"{path}.map_noise"), ours.model_channels, f"{path}.map_noise.num_channels")
    for extra in ("map_label", "map_augment"):
        if module_children(unet).get(extra) is not None:
            raise ValueError(f"Unsupported configuration: {path}.{extra} is set (class labels / augmentation labels).")
    for name, module in ours.named_modules():
        if not name:
            continue
        ref_name = {"out_norm": f"dec.{res}x{res}_aux_norm", "out_conv": f"dec.{res}x{res}_aux_conv"}.get(name, name)
        rec = get_path(unet, ref_name)
        where = f"{path}.{ref_name}"
        if isinstance(module, EDMBlock):
            _need(rec, where, ("UNetBlock",), "a U-Net block")
            _expect(_attr(rec, "adaptive_scale", where), False, f"{where}.adaptive_scale")
            _expect(float(_attr(rec, "skip_scale", where)), SKIP_SCALE, f"{where}.skip_scale")
            _expect(_attr(rec, "num_heads", where), module.num_heads, f"{where}.num_heads")
            _expect(float(_attr(rec, "dropout", where)), module.dropout, f"{where}.dropout")
        elif isinstance(module, nn.GroupNorm):
            _need(rec, where, ("GroupNorm",), "a group norm")
            _expect(_attr(rec, "num_groups", where), module.num_groups, f"{where}.num_groups")
            _expect(float(_attr(rec, "eps", where)), module.eps, f"{where}.eps")
        elif isinstance(module, EDMConv2d):
            _need(rec, where, ("Conv2d",), "a convolution")
            _expect(bool(_attr(rec, "fused_resample", where, False)), False, f"{where}.fused_resample")
            _expect((bool(_attr(rec, "up", where)), bool(_attr(rec, "down", where))), (module.up, module.down), f"{where}.up/down")
            if module.resample_filter is not None:
                f = module_tensors(rec).get("resample_filter")
                if f is None or f.shape != module.resample_filter.shape or not torch.allclose(f.double(), module.resample_filter.double()):
                    raise ValueError(f"Unsupported configuration: {where}.resample_filter differs from the [1, 1] filter.")


def _map_unet(unet: Record, ours: EDMUNet, res: int, path: str, prefix: str, out: Dict, mapping: Dict) -> None:
    tensors = record_state_dict(unet)
    expected = ours.state_dict()
    mapped = {_unet_key(k, res): k for k in tensors}
    missing, unexpected = sorted(set(expected) - set(mapped)), sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Unsupported configuration: the SongUNet at {path} does not have the EDM conditioner's structure "
            f"(channel_mult [1, 1], attention at 16×16): missing {missing[:4]}, unexpected {[mapped[k] for k in unexpected[:4]]}."
        )
    for key, ref_key in mapped.items():
        if tuple(tensors[ref_key].shape) != tuple(expected[key].shape):
            raise ValueError(f"Unsupported configuration: {path}.{ref_key} has shape {tuple(tensors[ref_key].shape)}, "
                             f"expected {tuple(expected[key].shape)}.")
        out[prefix + key] = tensors[ref_key]
        mapping[prefix + key] = f"{path}.{ref_key}"


# ---------------------------------------------------------------------- the invertible network
def _map_g(g_rec: Record, path: str, prefix: str, args: Dict, out: Dict, mapping: Dict, warnings: List[str]) -> Dict:
    """Map one ``InverseUnet`` record; returns the network part of our config."""
    _need(g_rec, path, G_TYPES, "the invertible network")
    inv = _need(module_children(g_rec).get("g"), f"{path}.g", ("InvUnet",), "the invertible network body")
    squeeze = bool(_attr(inv, "use_squeeze", f"{path}.g"))
    blocks = _children(module_children(inv).get("blocks"))
    if len(blocks) != 2 * args["num_of_layers"]:
        warnings.append(f"{path}.g has {len(blocks)} blocks; args.json num_of_layers = {args['num_of_layers']} implies "
                        f"{2 * args['num_of_layers']}. Converted the {len(blocks)} blocks found.")
    if not blocks:
        raise ValueError(f"Unsupported checkpoint: {path}.g.blocks is empty.")
    channels = args["in_ch"] * (4 if squeeze else 1)
    res = args["img_size"] // (2 if squeeze else 1)
    config: Dict[str, Any] = dict(num_blocks=len(blocks), squeeze=squeeze, conv1x1="plain", clamp="hard",
                                  conditioner_type="edm")
    for i, blk in enumerate(blocks):
        bpath, bprefix = f"{path}.g.blocks.{i}", f"{prefix}blocks.{i}."
        _need(blk, bpath, ("InvUnetBlock",), "a flow block")
        kids = module_children(blk)
        act = kids.get("actnorm")
        if act is None:  # use_actnorm=False: the identity, i.e. zero bias and log-scale, marked initialised
            out[bprefix + "actnorm.bias"] = torch.zeros(channels)
            out[bprefix + "actnorm.log_scale"] = torch.zeros(channels)
            initialized = True
        else:
            _need(act, f"{bpath}.actnorm", ("ActNorm2d",), "an ActNorm")
            t = module_tensors(act)
            for name in ("bias", "log_scale"):
                if name not in t or t[name].numel() != channels:
                    raise ValueError(f"Unsupported checkpoint: {bpath}.actnorm.{name} is missing or not {channels} values.")
                out[bprefix + f"actnorm.{name}"] = t[name].reshape(channels)
                mapping[bprefix + f"actnorm.{name}"] = f"{bpath}.actnorm.{name}"
            _expect(float(_attr(act, "eps", f"{bpath}.actnorm", 1e-6)), 1e-6, f"{bpath}.actnorm.eps")
            initialized = bool(_attr(act, "initialized", f"{bpath}.actnorm", False))
            if not initialized:
                warnings.append(f"{bpath}.actnorm was never initialised (the reference initialises it from the first batch "
                                "it sees); converted as not initialised: ours initialises on the first training batch.")
        out[bprefix + "actnorm.initialized"] = torch.tensor(int(initialized), dtype=torch.uint8)
        mapping[bprefix + "actnorm.initialized"] = f"{bpath}.actnorm.initialized (attribute)"
        mix = _need(kids.get("mix"), f"{bpath}.mix", ("Inv1x1Conv",), "the 1×1 convolution")
        w = module_tensors(mix).get("W")
        if w is None or tuple(w.shape) != (channels, channels):
            raise ValueError(f"Unsupported checkpoint: {bpath}.mix.W is missing or not {channels}×{channels}.")
        out[bprefix + "conv1x1.weight"], mapping[bprefix + "conv1x1.weight"] = w, f"{bpath}.mix.W"
        for ref_name, ours_name in (("F", "coupling_f"), ("G", "coupling_g")):
            cpath = f"{bpath}.{ref_name}"
            coupling = _need(kids.get(ref_name), cpath, ("AffineCoupling",), "an affine coupling")
            clamp = float(_attr(coupling, "clamp", cpath))
            config.setdefault("clamp_value", clamp)
            _expect(clamp, config["clamp_value"], f"{cpath}.clamp")
            _expect(_attr(coupling, "C_half", cpath, channels // 2), channels // 2, f"{cpath}.C_half")
            wrapper = _need(module_children(coupling).get("cond"), f"{cpath}.cond", ("SongUNetWrapper",), "a conditioner")
            upath = f"{cpath}.cond.net"
            unet = _need(module_children(wrapper).get("net"), upath, ("SongUNet",), "the conditioner U-Net")
            width, layers = _unet_hparams(unet, upath)
            config.setdefault("conditioner_channels", width)
            config.setdefault("conditioner_layers", layers)
            _expect((width, layers), (config["conditioner_channels"], config["conditioner_layers"]), f"{upath} (width, blocks)")
            ours = edm_conditioner(channels // 2, channels, res, width, layers)
            _check_unet(unet, ours, res, upath)
            _map_unet(unet, ours, res, upath, f"{bprefix}{ours_name}.conditioner.", out, mapping)
    return config


# ---------------------------------------------------------------------- the core
def _map_core(lin: Record, path: str, dim: int, out: Dict, mapping: Dict) -> Dict:
    _need(lin, path, LINEAR_MODULES, "the linear network")
    rank = _attr(lin, "lora_features", path)
    _expect(_attr(lin, "out_features", path), dim, f"{path}.out_features (D = in_ch·img_size²)")
    config: Dict[str, Any] = dict(core_type="time_lowrank", core_rank=int(rank), core_identity=False,
                                  core_time_embedding="reference")
    # ẑ = z·A1·A2ᵀ (rows) is A2·A1ᵀ·z (columns): U(t) = A2 = lin2(t), V(t) = A1 = lin1(t).
    for ref_name, ours_name in (("lin1", "v_mlp"), ("lin2", "u_mlp")):
        spath = f"{path}.{ref_name}"
        seq = _need(module_children(lin).get(ref_name), spath, ("Sequential",), "a time MLP")
        parts = _children(seq)
        kinds = tuple(p.class_name if isinstance(p, Record) else type(p).__name__ for p in parts)
        if kinds != ("SinusoidalPosEmb", "Linear", "GELU", "Linear", "GELU", "Linear"):
            raise ValueError(f"Unsupported configuration: {spath} is {' → '.join(kinds)}; expected SinusoidalPosEmb → "
                             "Linear → GELU → Linear → GELU → Linear.")
        emb = int(_attr(parts[0], "dim", f"{spath}.0"))
        hidden = int(_attr(parts[1], "out_features", f"{spath}.1"))
        for j in (2, 4):
            _expect(_attr(parts[j], "approximate", f"{spath}.{j}", "none"), "none", f"{spath}.{j}.approximate")
        for name, expected in (("core_embedding_dim", emb), ("core_hidden_dim", hidden)):
            config.setdefault(name, expected)
            _expect(expected, config[name], f"{spath} ({name})")
        shapes = {1: (hidden, emb), 3: (hidden, hidden), 5: (dim * rank, hidden)}
        for j, ours_j in ((1, 0), (3, 2), (5, 4)):
            t = module_tensors(parts[j])
            for name in ("weight", "bias"):
                want = shapes[j] if name == "weight" else shapes[j][:1]
                if name not in t or tuple(t[name].shape) != want:
                    raise ValueError(f"Unsupported checkpoint: {spath}.{j}.{name} is missing or not of shape {want}.")
                out[f"core.{ours_name}.{ours_j}.{name}"] = t[name]
                mapping[f"core.{ours_name}.{ours_j}.{name}"] = f"{spath}.{j}.{name}"
    return config


# ---------------------------------------------------------------------- the whole checkpoint
def convert_records(root: Any, args: Dict[str, Any]) -> Tuple[Dict, "OrderedDict[str, torch.Tensor]", Dict, List[str]]:
    """``(config, state_dict, mapping, warnings)`` of our ``LinearizerModel`` from the checkpoint's records."""
    if not isinstance(root, Record) or not {"net_gx", "net_gy", "linear_network"} <= set(module_children(root)):
        raise ValueError(f"Unsupported checkpoint: the file holds {root!r:.60}, not a pickled Linearizer module "
                         "(an object with net_gx, net_gy and linear_network).")
    kids = module_children(root)
    gx, gy = kids["net_gx"], kids["net_gy"]
    shared = gy is None or gy is gx
    dim = args["in_ch"] * args["img_size"] ** 2
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    mapping: Dict[str, str] = {}
    warnings: List[str] = []
    config = _map_g(gx, "net_gx", "g." if shared else "g_x.", args, out, mapping, warnings)
    if not shared:
        config_y = _map_g(gy, "net_gy", "g_y.", args, out, mapping, warnings)
        if config_y != config:
            raise ValueError(f"Unsupported configuration: net_gy ({config_y}) differs in structure from net_gx ({config}).")
    config.update(_map_core(kids["linear_network"], "linear_network", dim, out, mapping))
    config.update(sample_size=args["img_size"], in_channels=args["in_ch"], shared_g=shared, role_x=ROLE_X, role_y=ROLE_Y)
    # Every tensor of the checkpoint must have landed somewhere (net_gy.* repeats net_gx.* when shared).
    reference = {k for k in record_state_dict(root) if not (shared and k.startswith("net_gy."))}
    left = sorted(reference - set(mapping.values()))
    if left:
        raise ValueError(f"Unsupported checkpoint: {len(left)} tensor(s) have no place in the converted model, e.g. {left[:4]}.")
    return config, out, mapping, warnings


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_reference_checkpoint(checkpoint_path: str, args_json: Optional[str] = None,
                                 solver: Optional[str] = None) -> ReferenceConversion:
    """Read ``model.pth`` (safely) and ``args.json`` and build the equivalent model and scheduler.

    ``solver`` overrides the scheduler's solver (default: the reference's ``sampling_method``, ``"rk"`` →
    ``"reference_rk"``, whose collapse is the reference's one-step matrix; ``"euler"`` → ``"euler"``).
    """
    args_path = args_json or find_args_json(checkpoint_path)
    args = read_reference_args(args_path)
    root, classes = load_checkpoint(checkpoint_path)
    config, state, mapping, warnings = convert_records(root, args)
    model = LinearizerModel(**config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:  # a bug in the mapping, not in the file
        raise RuntimeError(f"Conversion mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"Unsupported checkpoint: {mapping.get(key, key)} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[key].shape)}.")
    model.load_state_dict(state, strict=True)
    model.eval()
    sampling = args.get("sampling_method", "rk")
    scheduler = LinearizerScheduler(solver=solver or SAMPLING_TO_SOLVER[sampling], timestep_spacing="reference")
    source = dict(
        checkpoint=os.path.abspath(checkpoint_path), checkpoint_sha256=_sha256(checkpoint_path),
        args_json=os.path.abspath(args_path), reference_classes=sorted(classes),
        tensors=sum(1 for v in mapping.values() if not v.endswith("(attribute)")),
        reference_steps=int(args.get("steps", 100)), reference_sampling_method=sampling,
        dataset=args.get("dataset"),
    )
    return ReferenceConversion(model, scheduler, args, source, warnings, mapping)
