"""Conversion of reference checkpoints: safe unpickling, tensor mapping, errors (no reference code needed).

The reference checkpoint is imitated by a tree of tiny stand-in classes registered under the reference's
module paths and class names (``linearizer``, ``one_step.modules.*``, ``common.song__unet``) with its
attribute names; they carry the weights of one of our own models, randomised, laid out the reference way.
``torch.save`` pickles that tree whole, the fake modules are removed again, and the converter must give
back exactly our model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from diffusers_linearizer import LinearizerModel, LinearizerPipeline
from diffusers_linearizer.conversion.convert import convert_reference_checkpoint
from diffusers_linearizer.conversion.export import save_converted_pipeline
from diffusers_linearizer.conversion.safe_unpickle import load_checkpoint
from diffusers_linearizer.models.edm_unet import EDMConv2d, EDMUNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("linearizer", "one_step", "one_step.modules", "one_step.modules.one_step_linearizer",
           "one_step.modules.invertable_network", "one_step.modules.linear_network", "common", "common.song__unet")


# ---------------------------------------------------------------------- the stand-in module tree
class _Plain(nn.Module):
    """A stand-in: sets attributes, registers given tensors as parameters / buffers."""

    def __init__(self, params=None, buffers=None, **attrs):
        super().__init__()
        for k, v in (params or {}).items():
            setattr(self, k, None if v is None else nn.Parameter(v.detach().clone()))
        for k, v in (buffers or {}).items():
            self.register_buffer(k, None if v is None else v.detach().clone())
        for k, v in attrs.items():
            setattr(self, k, v)


def _stand_in(module: str, name: str, base=_Plain):
    cls = type(name, (base,), {})
    cls.__module__, cls.__qualname__ = module, name
    return cls


NAMES = {
    "linearizer": ["Linearizer"],
    "one_step.modules.one_step_linearizer": ["OneStepLinearizer"],
    "one_step.modules.invertable_network": ["ActNorm2d", "Inv1x1Conv", "Squeeze2x2", "SongUNetWrapper", "AffineCoupling",
                                            "InvUnetBlock", "InvUnet", "InverseUnet"],
    "one_step.modules.linear_network": ["SinusoidalPosEmb", "TimeDependentLoRALinearLayer"],
    "common.song__unet": ["Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "SongUNet"],
}
C = {name: _stand_in(mod, name) for mod, names in NAMES.items() for name in names}


def _register_modules():
    for mod in MODULES:
        sys.modules[mod] = types.ModuleType(mod)
    for mod, names in NAMES.items():
        for name in names:
            setattr(sys.modules[mod], name, C[name])


def _unregister_modules():
    for mod in MODULES:
        sys.modules.pop(mod, None)


def _linear(p):
    return C["Linear"](params=dict(weight=p.weight, bias=p.bias), in_features=p.in_features, out_features=p.out_features)


def _conv(p: EDMConv2d):
    kernel = 0 if p.weight is None else p.weight.shape[-1]
    return C["Conv2d"](params=dict(weight=p.weight, bias=p.bias), buffers=dict(resample_filter=p.resample_filter),
                       in_channels=p.in_channels, out_channels=p.out_channels, up=p.up, down=p.down,
                       fused_resample=False, kernel=kernel)


def _norm(p: nn.GroupNorm):
    return C["GroupNorm"](params=dict(weight=p.weight, bias=p.bias), num_groups=p.num_groups, eps=p.eps)


def _block(b, adaptive_scale=False):
    m = C["UNetBlock"](in_channels=b.in_channels, out_channels=b.out_channels, emb_channels=b.affine.in_features,
                       num_heads=b.num_heads, dropout=0.1, skip_scale=np.sqrt(0.5), adaptive_scale=adaptive_scale)
    m.norm0, m.conv0, m.affine, m.norm1, m.conv1 = _norm(b.norm0), _conv(b.conv0), _linear(b.affine), _norm(b.norm1), _conv(b.conv1)
    m.skip = None if b.skip is None else _conv(b.skip)
    if b.num_heads:
        m.norm2, m.qkv, m.proj = _norm(b.norm2), _conv(b.qkv), _conv(b.proj)
    return m


def _song_unet(u: EDMUNet, res: int, **overrides):
    m = C["SongUNet"](label_dropout=0, map_label=None, map_augment=None)
    m.map_noise = C["PositionalEmbedding"](num_channels=u.model_channels, max_positions=10000, endpoint=True)
    m.map_layer0, m.map_layer1 = _linear(u.map_layer0), _linear(u.map_layer1)
    m.enc = nn.ModuleDict({k: _conv(v) if isinstance(v, EDMConv2d) else _block(v, **overrides) for k, v in u.enc.items()})
    m.dec = nn.ModuleDict({k: _block(v, **overrides) for k, v in u.dec.items()})
    m.dec[f"{res}x{res}_aux_norm"], m.dec[f"{res}x{res}_aux_conv"] = _norm(u.out_norm), _conv(u.out_conv)
    return m


def _mlp(seq: nn.Sequential, emb_dim: int):
    return nn.Sequential(C["SinusoidalPosEmb"](dim=emb_dim), seq[0], nn.GELU(), seq[2], nn.GELU(), seq[4])


def source_model(in_ch=1, size=8, seed=0, **kw) -> LinearizerModel:
    """Our model with the reference's structure (tiny), every tensor random and distinct."""
    torch.manual_seed(seed)
    config = dict(sample_size=size, in_channels=in_ch, num_blocks=2, conditioner_type="edm", conditioner_channels=8,
                  conditioner_layers=1, clamp="hard", clamp_value=5.0, conv1x1="plain", squeeze=in_ch % 2 == 1,
                  core_type="time_lowrank", core_rank=2, core_hidden_dim=16, core_embedding_dim=8, core_identity=False,
                  core_time_embedding="reference", shared_g=True, role_x=1.0, role_y=0.0)
    config.update(kw)
    model = LinearizerModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("initialized"):
                b.fill_(1)
    return model.eval()


def reference_tree(model: LinearizerModel, initialized=True, linear_class="TimeDependentLoRALinearLayer", **unet_kw):
    """The reference's OneStepLinearizer layout carrying ``model``'s weights."""
    cfg = model.config
    g = model.g
    blocks = []
    res = cfg.sample_size // (2 if g.squeeze is not None else 1)
    for blk in g.blocks:
        c = blk.actnorm.bias.numel()
        act = C["ActNorm2d"](params=dict(bias=blk.actnorm.bias.view(1, c, 1, 1), log_scale=blk.actnorm.log_scale.view(1, c, 1, 1)),
                             initialized=initialized, eps=1e-6)
        f = C["AffineCoupling"](cond=C["SongUNetWrapper"](net=_song_unet(blk.coupling_f.conditioner, res, **unet_kw)),
                                C_half=c // 2, clamp=5.0)
        gg = C["AffineCoupling"](cond=C["SongUNetWrapper"](net=_song_unet(blk.coupling_g.conditioner, res, **unet_kw)),
                                 C_half=c // 2, clamp=5.0)
        blocks.append(C["InvUnetBlock"](F=f, G=gg, mix=C["Inv1x1Conv"](params=dict(W=blk.conv1x1.weight)), actnorm=act))
    squeeze = g.squeeze is not None
    inv = C["InvUnet"](use_squeeze=squeeze, squeeze=C["Squeeze2x2"]() if squeeze else None, blocks=nn.ModuleList(blocks))
    net = C["InverseUnet"](g=inv, dim=cfg.in_channels * cfg.sample_size**2)
    dim = cfg.in_channels * cfg.sample_size**2
    core = model.core  # ours: A = U Vᵀ (columns); the reference: ẑ = z·lin1·lin2ᵀ (rows)
    lin = C.get(linear_class) or _stand_in("one_step.modules.linear_network", linear_class)
    if linear_class not in C:
        setattr(sys.modules["one_step.modules.linear_network"], linear_class, lin)
    linear = lin(out_features=dim, lora_features=cfg.core_rank, lin1=_mlp(core.v_mlp, cfg.core_embedding_dim),
                 lin2=_mlp(core.u_mlp, cfg.core_embedding_dim))
    return C["OneStepLinearizer"](net_gx=net, net_gy=net, linear_network=linear)


def save_reference(tmp_path, model, args_overrides=None, **tree_kw):
    _register_modules()
    try:
        tree = reference_tree(model, **tree_kw)
        run = tmp_path / "run"
        (run / "models").mkdir(parents=True)
        torch.save(tree, run / "models" / "model.pth")
    finally:
        _unregister_modules()
    cfg = model.config
    args = dict(dataset="mnist", img_size=cfg.sample_size, in_ch=cfg.in_channels, out_ch=cfg.in_channels,
                num_of_layers=cfg.num_blocks // 2, linear_lora_features=cfg.core_rank, steps=10,
                sampling_method="rk", linear_module="TimeDependentLoRALinearLayer", g="InverseUnet")
    args.update(args_overrides or {})
    (run / "args.json").write_text(json.dumps(args))
    return run / "models" / "model.pth"


def _reference_embedding(t, dim):  # sin/cos of t, ω_j = 10000^(−j/(k−1))
    k = dim // 2
    freqs = torch.exp(torch.arange(k, dtype=t.dtype) * (-math.log(10000.0) / (k - 1)))
    return torch.cat([(t[:, None] * freqs).sin(), (t[:, None] * freqs).cos()], 1)


# ---------------------------------------------------------------------- round trip
@pytest.mark.parametrize("in_ch", [1, 2])
def test_every_tensor_lands_in_place_and_pipeline_runs(tmp_path, in_ch):
    model = source_model(in_ch=in_ch)
    ckpt = save_reference(tmp_path, model)
    conversion = convert_reference_checkpoint(str(ckpt))
    assert not any(m in sys.modules for m in ("one_step", "common.song__unet", "linearizer"))  # nothing imported
    assert conversion.warnings == []
    ours, expected = conversion.model.state_dict(), model.state_dict()
    assert set(ours) == set(expected)
    for key in expected:
        assert torch.equal(ours[key], expected[key]), key
    for key in ("conditioner_type", "clamp", "clamp_value", "conv1x1", "squeeze", "core_type", "core_rank",
                "core_hidden_dim", "core_embedding_dim", "core_identity", "core_time_embedding", "shared_g",
                "conditioner_channels", "conditioner_layers", "num_blocks"):
        assert conversion.model.config[key] == model.config[key], key
    assert conversion.scheduler.config.solver == "reference_rk"
    assert conversion.scheduler.config.timestep_spacing == "reference"

    # The row-vector core of the reference, ẑ = z·A1·A2ᵀ, is our column operator A = A2·A1ᵀ.
    tree_lin1, tree_lin2 = model.core.v_mlp, model.core.u_mlp
    for t in (0.0, 0.4):
        e = _reference_embedding(torch.tensor([t]), 8)
        a1, a2 = tree_lin1(e).view(-1, 2), tree_lin2(e).view(-1, 2)
        dense = conversion.model.core_operator(t).to_dense(max_dim=4096)
        torch.testing.assert_close(dense, (a1 @ a2.T).T, rtol=1e-5, atol=1e-6)

    out = tmp_path / "pipe"
    save_converted_pipeline(conversion, str(out))
    index = json.loads((out / "model_index.json").read_text())
    assert index["linearizer"] == ["diffusers_linearizer", "LinearizerModel"]
    assert index["scheduler"] == ["diffusers_linearizer", "LinearizerScheduler"]
    card = (out / "README.md").read_text()
    assert "## Source" in card and conversion.source["checkpoint_sha256"] in card
    pipe = LinearizerPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    loaded = pipe.linearizer.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())
    images = pipe(batch_size=2, num_inference_steps=4, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, in_ch, 8, 8) and torch.isfinite(images).all()


def test_cli_writes_pipeline_directory(tmp_path):
    ckpt = save_reference(tmp_path, source_model(), args_overrides=dict(sampling_method="euler"))
    spec = importlib.util.spec_from_file_location("convert_cli", os.path.join(ROOT, "conversion", "convert_reference_to_diffusers.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "out"
    assert cli.main(["--checkpoint_path", str(ckpt), "--dump_path", str(out), "--dtype", "fp64"]) == 0
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["solver"] == "euler" and scheduler["timestep_spacing"] == "reference"
    from safetensors import safe_open

    with safe_open(str(out / "linearizer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if not k.endswith("initialized")} == {torch.float64}
    missing = tmp_path / "nowhere.pth"
    assert cli.main(["--checkpoint_path", str(missing), "--dump_path", str(out)]) == 2


def test_uninitialised_actnorm_is_carried_over_with_a_warning(tmp_path):
    ckpt = save_reference(tmp_path, source_model(), initialized=False)
    conversion = convert_reference_checkpoint(str(ckpt))
    assert any("never initialised" in w for w in conversion.warnings)
    assert all(int(b) == 0 for n, b in conversion.model.named_buffers() if n.endswith("initialized"))


# ---------------------------------------------------------------------- malicious and broken files
class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return [
        (os.system, (f"touch {marker}",), "system"),
        (eval, (f"open({str(marker)!r}, 'w')",), "builtins.eval"),
        (open, (str(marker), "w"), "open"),
        (np.save, (str(marker), [0.0]), "numpy.save"),  # a module that is not on any deny list
    ]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_runs_nothing(tmp_path, index, how):
    marker = tmp_path / "pwned_x"
    func, args, name = _payloads(marker)[index]
    path = tmp_path / "model.pth"
    obj = {"state": torch.zeros(2) if how == "torch.save" else [0.0], "evil": _Payload(func, args)}
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_checkpoint(str(path))
    assert not marker.exists() and not (tmp_path / "pwned_x.npy").exists()


def test_payload_inside_a_module_tree_is_refused(tmp_path):
    marker = tmp_path / "pwned_tree"
    model = source_model()
    _register_modules()
    try:
        tree = reference_tree(model)
        tree.linear_network.extra = _Payload(os.system, (f"touch {marker}",))
        (tmp_path / "models").mkdir()
        torch.save(tree, tmp_path / "models" / "model.pth")
    finally:
        _unregister_modules()
    (tmp_path / "args.json").write_text(json.dumps(dict(img_size=8, in_ch=1, num_of_layers=1, linear_lora_features=2)))
    with pytest.raises(ValueError, match="system"):
        convert_reference_checkpoint(str(tmp_path / "models" / "model.pth"))
    assert not marker.exists()


def test_truncated_and_non_pickle_files(tmp_path):
    ckpt = save_reference(tmp_path, source_model())
    data = ckpt.read_bytes()
    for i, blob in enumerate([data[: len(data) // 2], data[:100], b"hello, I am not a checkpoint\n", b""]):
        path = tmp_path / f"bad{i}.pth"
        path.write_bytes(blob)
        with pytest.raises(ValueError, match="truncated|not a torch.save checkpoint|not a valid"):
            load_checkpoint(str(path))
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2)[:-3])
    with pytest.raises(ValueError, match="truncated|not a valid"):
        load_checkpoint(str(raw))


def test_missing_args_json(tmp_path):
    ckpt = save_reference(tmp_path, source_model())
    (tmp_path / "run" / "args.json").unlink()
    with pytest.raises(ValueError, match=r"args\.json.*--args_json"):
        convert_reference_checkpoint(str(ckpt))
    with pytest.raises(ValueError, match="not found"):
        convert_reference_checkpoint(str(ckpt), args_json=str(tmp_path / "nope.json"))


@pytest.mark.parametrize("field,value", [("linear_module", "DenseLinearLayer"), ("g", "InvertibleResNet"),
                                         ("sampling_method", "dopri5"), ("out_ch", 3), ("in_ch", "one")])
def test_unsupported_args_name_the_field(tmp_path, field, value):
    ckpt = save_reference(tmp_path, source_model(), args_overrides={field: value})
    with pytest.raises(ValueError, match=field):
        convert_reference_checkpoint(str(ckpt))


def test_unsupported_structure_names_the_field(tmp_path):
    ckpt = save_reference(tmp_path / "a", source_model(), linear_class="DenseLinearLayer")
    with pytest.raises(ValueError, match=r"linear_network.*DenseLinearLayer"):
        convert_reference_checkpoint(str(ckpt))
    ckpt = save_reference(tmp_path / "b", source_model(), adaptive_scale=True)
    with pytest.raises(ValueError, match="adaptive_scale"):
        convert_reference_checkpoint(str(ckpt))
