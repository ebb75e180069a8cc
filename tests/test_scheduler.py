"""LinearizerScheduler: the diffusers scheduler interface, the grids, and the stage-by-stage solvers."""

import copy
import pickle

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from diffusers_linearizer.schedulers import SOLVERS, LinearizerScheduler

F64 = torch.float64


def _shifted(sigma, shift):
    return shift * sigma / (1 + (shift - 1) * sigma)


# ---------------------------------------------------------------------------- config round trips
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_from_flow_match_config_honours_shift(shift):
    source = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler = LinearizerScheduler.from_config(source.config)
    assert scheduler.config.shift == shift
    assert scheduler.config.solver == "euler" and scheduler.config.timestep_spacing == "reference"
    assert "use_dynamic_shifting" not in scheduler.config  # unknown keys are dropped
    scheduler.set_timesteps(5)
    expected = _shifted(torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=F64), shift)
    torch.testing.assert_close(scheduler.sigmas, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(scheduler.timesteps, expected[:-1] * 1000, rtol=0, atol=1e-12)


def test_from_config_of_heun_and_overrides():
    scheduler = LinearizerScheduler.from_config(FlowMatchHeunDiscreteScheduler(shift=2.0).config, solver="rk4")
    assert scheduler.config.shift == 2.0 and scheduler.config.solver == "rk4" and scheduler.order == 4
    # and back: a diffusers scheduler can be built from ours
    back = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    assert back.config.shift == 2.0


def test_save_and_load_with_subfolder(tmp_path):
    scheduler = LinearizerScheduler(shift=1.5, solver="heun", timestep_spacing="linspace", num_train_timesteps=500)
    scheduler.save_pretrained(tmp_path / "scheduler")
    loaded = LinearizerScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert dict(loaded.config) == dict(scheduler.config)
    loaded.set_timesteps(7)
    scheduler.set_timesteps(7)
    assert torch.equal(loaded.timesteps, scheduler.timesteps)


def test_linspace_euler_is_flow_match_euler_on_the_velocity():
    """Module docstring: with linspace spacing and shift 1 the grid is FlowMatchEuler's without its final σ = 0,
    and an Euler step from ẑ₁ equals diffusers' step from v = (z − ẑ₁)/σ, step for step (fp32)."""
    T = 7
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(T)
    ours = LinearizerScheduler(timestep_spacing="linspace")
    ours.set_timesteps(T)
    assert float(flow.sigmas[-1]) == 0.0
    torch.testing.assert_close(ours.sigmas.float(), flow.sigmas[:-1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.timesteps.float(), flow.timesteps[:-1], rtol=1e-6, atol=1e-4)
    gen = torch.Generator().manual_seed(0)
    A = torch.eye(8) * 0.3 + torch.randn(8, 8, generator=gen) * 0.2
    z_ours = z_flow = torch.randn(3, 8, generator=gen)
    for ts, ts_flow, sigma in zip(ours.timesteps, flow.timesteps, flow.sigmas):
        z_ours = ours.step(z_ours @ A.T, ts, z_ours).prev_sample
        v = (z_flow - z_flow @ A.T) / sigma
        z_flow = flow.step(v, ts_flow, z_flow).prev_sample
        torch.testing.assert_close(z_ours, z_flow, rtol=1e-5, atol=1e-5)
    assert ours.step_index == T - 1 and flow.step_index == T - 1  # theirs has one step left, to σ = 0


# ---------------------------------------------------------------------------- grids
def test_reference_grid_euler():
    scheduler = LinearizerScheduler()
    scheduler.set_timesteps(5)
    assert scheduler.num_inference_steps == 5 and scheduler.order == 1
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 800, 600, 400], dtype=F64))
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=F64))
    torch.testing.assert_close(scheduler.t_of(scheduler.timesteps), torch.tensor([0.0, 0.2, 0.4, 0.6], dtype=F64))


def test_reference_grid_stages():
    heun = LinearizerScheduler(solver="heun")
    heun.set_timesteps(4)  # t = 0, 1/4, 2/4, 3/4: three steps of two evaluations
    expected = 1000 * (1 - torch.tensor([0, 1, 1, 2, 2, 3], dtype=F64) / 4)
    torch.testing.assert_close(heun.timesteps, expected)
    rk4 = LinearizerScheduler(solver="rk4")
    rk4.set_timesteps(3)  # t = 0, 1/3, 2/3
    t = torch.tensor([0, 1 / 6, 1 / 6, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 2 / 3], dtype=F64)
    torch.testing.assert_close(rk4.t_of(rk4.timesteps), t)
    assert len(rk4.sigmas) == 3


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_linspace_grid_never_reaches_data(solver, shift):
    scheduler = LinearizerScheduler(solver=solver, timestep_spacing="linspace", shift=shift)
    scheduler.set_timesteps(6)
    sigmas = torch.linspace(1.0, 1e-3, 6, dtype=F64)
    torch.testing.assert_close(scheduler.sigmas, _shifted(sigmas, shift))
    assert float(scheduler.timesteps.min()) > 0  # K is never evaluated at t = 1
    assert torch.all(torch.diff(scheduler.sigmas) < 0)
    assert len(scheduler.timesteps) == 5 * scheduler.order


def test_time_conversions():
    scheduler = LinearizerScheduler(num_train_timesteps=1000)
    assert scheduler.t_of(250.0) == 0.75
    assert scheduler.timestep_of(0.75) == 250.0
    ts = torch.tensor([1000.0, 500.0])
    torch.testing.assert_close(scheduler.t_of(ts), torch.tensor([0.0, 0.5], dtype=F64))


# ---------------------------------------------------------------------------- interface details
def test_interface_constants():
    scheduler = LinearizerScheduler(solver="rk4")
    assert scheduler.init_noise_sigma == 1.0
    assert len(scheduler) == 1000
    x = torch.randn(2, 3)
    assert scheduler.scale_model_input(x, 10.0) is x
    assert [LinearizerScheduler(solver=s).order for s in SOLVERS] == [1, 2, 4, 3]


def test_scale_noise_is_the_forward_process():
    scheduler = LinearizerScheduler()
    sample, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    timesteps = torch.tensor([1000.0, 250.0, 0.0])
    t = torch.tensor([0.0, 0.75, 1.0]).view(3, 1, 1, 1)
    expected = (1 - t) * noise + t * sample
    torch.testing.assert_close(scheduler.scale_noise(sample, timesteps, noise), expected)
    torch.testing.assert_close(scheduler.add_noise(sample, noise, timesteps), expected)
    torch.testing.assert_close(scheduler.scale_noise(sample, 250.0, noise), 0.25 * noise + 0.75 * sample)


def test_index_for_timestep_prefers_step_starts():
    scheduler = LinearizerScheduler(solver="heun")
    scheduler.set_timesteps(4)  # [1000, 750, 750, 500, 500, 250]
    assert scheduler.index_for_timestep(scheduler.timesteps[0]) == 0
    assert scheduler.index_for_timestep(750.0) == 2
    assert scheduler.index_for_timestep(torch.tensor(250.0, dtype=torch.float32)) == 5
    with pytest.raises(ValueError, match="not in the schedule"):
        scheduler.index_for_timestep(123.0)


def test_copy_and_pickle():
    scheduler = LinearizerScheduler(solver="heun")
    scheduler.set_timesteps(5)
    # A = I/2: K(t) = −1/(2(1 − t)) is a scalar, so B is the scalar Heun run of z' = K(t) z on t = 0, .2, …, .8
    k = lambda t: -0.5 / (1.0 - t)  # noqa: E731
    expected = 1.0
    for i in range(4):
        t, h = i / 5, 0.2
        expected *= 1.0 + h / 2 * (k(t) + k(t + h) * (1.0 + h * k(t)))
    for clone in (copy.deepcopy(scheduler), pickle.loads(pickle.dumps(scheduler))):
        assert torch.equal(clone.timesteps, scheduler.timesteps)
        B = clone.collapse(_ConstantA(torch.eye(4, dtype=F64) * 0.5))
        torch.testing.assert_close(B.apply(torch.eye(4, dtype=F64)), expected * torch.eye(4, dtype=F64),
                                   rtol=1e-14, atol=1e-14)


class _ConstantA(torch.nn.Module):
    """A minimal time-independent core built on a dense matrix (``operators`` via DenseCore)."""

    time_dependent = False

    def __init__(self, A):
        super().__init__()
        from diffusers_linearizer.models import DenseCore

        self.inner = DenseCore(A.shape[0], A)

    def operators(self, ts, dtype=None):
        return self.inner.operators(ts, dtype)


# ---------------------------------------------------------------------------- stepping
def _linear_model(A):
    return lambda z, t: z @ A.T


def _run(scheduler, model, z):
    for ts in scheduler.timesteps:
        out = model(z, scheduler.t_of(ts))
        z = scheduler.step(out, ts, z).prev_sample
    return z


def _hand_solver(solver, A_of, z, grid):
    """Textbook explicit solvers of dz/dt = (A_t z − z)/(1 − t) on ``grid`` (independent of the scheduler)."""
    f = lambda t, y: (y @ A_of(t).T - y) / (1 - t)  # noqa: E731
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        if solver == "euler":
            z = z + h * f(t0, z)
        elif solver == "heun":
            k1 = f(t0, z)
            z = z + h / 2 * (k1 + f(t1, z + h * k1))
        elif solver == "rk4":
            k1 = f(t0, z)
            k2 = f(t0 + h / 2, z + h / 2 * k1)
            k3 = f(t0 + h / 2, z + h / 2 * k2)
            k4 = f(t1, z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:  # the reference's collapsed "rk": all slopes at the same state
            z = z + h / 6 * (f(t0, z) + 4 * f(t0 + h / 2, z) + f(t1, z))
    return z


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("spacing", ["reference", "linspace"])
def test_stepping_matches_textbook_solver(solver, spacing):
    gen = torch.Generator().manual_seed(0)
    D = 6
    A0, A1 = torch.randn(D, D, generator=gen, dtype=F64) * 0.3, torch.randn(D, D, generator=gen, dtype=F64) * 0.3
    A_of = lambda t: A0 + float(t) * A1  # noqa: E731  (genuinely time-dependent)
    scheduler = LinearizerScheduler(solver=solver, timestep_spacing=spacing, shift=2.0)
    scheduler.set_timesteps(7)
    z0 = torch.randn(3, D, generator=gen, dtype=F64)
    got = _run(scheduler, lambda z, t: z @ A_of(t).T, z0)
    grid = (1 - scheduler.sigmas).tolist()
    torch.testing.assert_close(got, _hand_solver(solver, A_of, z0, grid), rtol=1e-12, atol=1e-12)


def test_step_output_types_and_dtypes():
    scheduler = LinearizerScheduler(solver="heun")
    scheduler.set_timesteps(3)
    z = torch.randn(2, 1, 4, 4, dtype=torch.float16)
    ts = scheduler.timesteps[0]
    out = scheduler.step(z * 0.5, ts, z)
    assert isinstance(out, SchedulerOutput) and out.prev_sample.dtype == torch.float16
    tup = scheduler.step(z * 0.5, scheduler.timesteps[1], out.prev_sample, return_dict=False)
    assert isinstance(tup, tuple) and tup[0].shape == z.shape
    assert scheduler.step_index == 2


def test_begin_index_and_restart():
    A = torch.eye(3, dtype=F64) * 0.5
    scheduler = LinearizerScheduler(solver="heun")
    scheduler.set_timesteps(6)
    z0 = torch.randn(2, 3, dtype=F64)
    full = _run(scheduler, _linear_model(A), z0)
    # img2img-style: start at the third step (begin_index counts evaluations, a multiple of order)
    scheduler.set_timesteps(6)
    scheduler.set_begin_index(2 * scheduler.order)
    z = z0
    for ts in scheduler.timesteps[2 * scheduler.order:]:
        z = scheduler.step(z @ A.T, ts, z).prev_sample
    scheduler2 = LinearizerScheduler(solver="heun")
    scheduler2.set_timesteps(6)
    expected = _hand_solver("heun", lambda t: A, z0, (1 - scheduler2.sigmas[2:]).tolist())
    torch.testing.assert_close(z, expected)
    assert full.shape == z0.shape


# ---------------------------------------------------------------------------- errors
def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="Unknown solver 'dpm'.*euler, heun, rk4, reference_rk"):
        LinearizerScheduler(solver="dpm")
    with pytest.raises(ValueError, match="Unknown timestep_spacing 'karras'.*reference, linspace"):
        LinearizerScheduler(timestep_spacing="karras")
    with pytest.raises(ValueError, match="shift must be positive"):
        LinearizerScheduler(shift=0.0)


@pytest.mark.parametrize("steps", [1, 0, -3, 2.5, None])
def test_too_few_steps(steps):
    with pytest.raises(ValueError, match="num_inference_steps must be"):
        LinearizerScheduler().set_timesteps(steps)


def test_step_rejects_unknown_keyword_arguments():
    scheduler = LinearizerScheduler()
    scheduler.set_timesteps(3)
    z = torch.zeros(1, 2)
    for name in ("s_churn", "generator", "eta"):
        with pytest.raises(TypeError, match=name):
            scheduler.step(z, scheduler.timesteps[0], z, **{name: None})
    assert scheduler.step_index is None  # nothing advanced
    scheduler.step(z, scheduler.timesteps[0], z, return_dict=False)
    assert scheduler.step_index == 1


def test_step_errors():
    scheduler = LinearizerScheduler()
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="before set_timesteps"):
        scheduler.step(z, 1000.0, z)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="not an integer index"):
        scheduler.step(z, 0, z)
    scheduler.step(z, scheduler.timesteps[0], z)
    with pytest.raises(ValueError, match="schedule is complete"):
        scheduler.step(z, scheduler.timesteps[0], z)
    rk4 = LinearizerScheduler(solver="rk4")
    rk4.set_timesteps(3)
    rk4.set_begin_index(1)
    with pytest.raises(ValueError, match="multiple of order = 4"):
        rk4.step(z, rk4.timesteps[1], z)
