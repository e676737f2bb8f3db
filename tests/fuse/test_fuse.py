"""edgerep.fuse(): the generic fx fuser on the zoo families, timm models, the known traps, and the fallback.

Every model gets randomized BN statistics and affines (so each branch contributes), and is checked on
odd, non-square inputs (the border is where wrong paddings show). Where a second, independent route
exists (the zoo's own `reparameterize()`, timm's `reparameterize_model`, torch.fx's conv+BN fuse), the
two fused models must agree with each other too.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from edgerep import fuse, zoo
from edgerep.models.specs import load_model
from edgerep.zoo.acb import ACBlock
from edgerep.zoo.common import reparameterize_model
from edgerep.zoo.dbb import DiverseBranchBlock
from edgerep.zoo.ghostnet import GhostModule
from edgerep.zoo.mobileone import MobileOneBlock
from edgerep.zoo.repvgg import RepVGGBlock
from tests.reparam_helpers import inputs, randomize, rel_err, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-5  # relative to the output's largest magnitude, FP32
ZOO = ["repvgg_tiny", "acb_resnet_tiny", "dbb_resnet_tiny", "orepa_resnet_tiny", "mobileone_tiny", "ghostnet_tiny",
       "saconv_resnet_tiny"]
X64 = (1, 3, 64, 64)
ODD = (2, 3, 37, 45)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def convs_in_order(model: nn.Module) -> list[nn.Conv2d]:
    """Conv2d modules in execution order (graph order for an fx GraphModule)."""
    if isinstance(model, fx.GraphModule):
        mods = dict(model.named_modules())
        out = []
        for n in model.graph.nodes:
            if n.op == "call_module":
                m = mods[n.target]
                out.extend(c for c in ([m] if isinstance(m, nn.Conv2d) else m.modules()) if isinstance(c, nn.Conv2d))
        return out
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# --- the zoo ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_fused():
    cache: dict[str, tuple[nn.Module, object]] = {}

    def get(name: str):
        if name not in cache:
            model = randomize(zoo.create_model(name)).eval()
            cache[name] = (model, fuse(model, inputs(X64)))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ZOO)
def test_zoo_family_fuses_exactly_and_agrees_with_its_own_deploy_code(name, zoo_fused):
    model, result = zoo_fused(name)
    report = result.report
    assert report.method == "fx"
    assert report.max_rel_err <= TOL
    assert len(report.checked_shapes) == 2 and report.checked_shapes[1][2] % 2 == 1  # an odd size was checked
    assert not result.model.training
    x = inputs(ODD)
    ref, out = run(model, x), run(result.model, x)
    assert rel_err(out, ref) <= TOL
    # Two independent routes: the zoo's own deploy code and the generic fx fuser.
    own = reparameterize_model(model)
    assert rel_err(out, run(own, x)) <= TOL
    assert report.ops_before.get("batch_norm", 0) > 0
    assert "batch_norm" not in report.ops_after  # SAConv too: the BN after its switch goes into both branches
    if name != "saconv_resnet_tiny":
        # SAConv is the exception on both counts: torch's FLOP counter sees convs only, so its switch pool merged
        # into a 5x5 conv counts as more (it is fewer operations: 25 MACs per input channel instead of 25 adds and
        # 1 MAC), and the 5x5 switch and a bias per branch are more parameters than the 1x1 switch.
        assert report.flops_after <= report.flops_before and report.params_after < report.params_before
    convs_before = sum(v for k, v in report.ops_before.items() if k.startswith("conv"))
    convs_after = sum(v for k, v in report.ops_after.items() if k.startswith("conv"))
    # GhostNet has no parallel linear branches to merge (only BN to fold), SAConv's are split by its switch.
    same = name in ("ghostnet_tiny", "saconv_resnet_tiny")
    assert convs_after == convs_before if same else convs_after < convs_before


def test_repvgg_fuses_to_a_plain_3x3_stack(zoo_fused):
    _, result = zoo_fused("repvgg_tiny")
    assert set(result.report.ops_after) == {"conv3x3", "relu", "global_pool", "flatten", "linear"}
    assert result.report.ops_after["conv3x3"] == result.report.ops_after["relu"] == 7
    assert {r.groups for r in result.report.regions} == {1, 2}  # the grouped layers stay grouped
    assert all(r.name.endswith(".reparam") for r in result.report.regions)


def test_original_model_is_untouched():
    model = randomize(zoo.create_model("dbb_resnet_tiny"))
    model.train()
    before = state_copy(model)
    fuse(model, inputs(X64))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ZOO)
def test_fused_weights_load_into_the_zoo_deploy_form(name, zoo_fused, tmp_path):
    model, result = zoo_fused(name)
    path = tmp_path / "fused.safetensors"
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(path))
    info = load_model(f"zoo:{name}", weights=path)
    assert info.deploy  # it went into the deploy form, not the training form
    x = inputs(ODD, seed=3)
    assert rel_err(run(info.module, x), run(model, x)) <= TOL


def test_saconv_bn_is_folded_into_both_branches_and_the_switch_stays(zoo_fused):
    """s*u + (1-s)*v then BN: BN's scale goes into both kernels (it commutes with the elementwise switch), its
    shift into both biases (s + (1-s) = 1), through the post-context by P' = diag(a) P diag(1/a)."""
    model, result = zoo_fused("saconv_resnet_tiny")
    fused = result.model
    for i, block in enumerate(model.blocks):
        sac = fused.get_submodule(f"blocks.{i}.conv1")
        assert not hasattr(fused.get_submodule(f"blocks.{i}"), "bn1")
        small, large = sac.get_submodule("reparam"), sac.get_submodule("reparam_1")
        assert (small.dilation, large.dilation) == ((1, 1), (3, 3)) and small.bias is not None
        # Both branches got the same per-channel BN scale: their ratio to the standardized kernels is BN's a.
        own = copy.deepcopy(block.conv1)
        own.reparameterize()
        a = block.bn1.weight.detach() / torch.sqrt(block.bn1.running_var + block.bn1.eps)
        torch.testing.assert_close(small.weight, own.reparam.weight * a.reshape(-1, 1, 1, 1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(large.weight, own.reparam_1.weight * a.reshape(-1, 1, 1, 1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(small.bias, large.bias)  # one shift for both: exact because s + (1-s) = 1
    assert result.report.ops_after["mul"] == result.report.ops_before["mul"]  # the switch stays


def test_saconv_bn_with_a_zero_scale_stays_unfolded():
    """Through the post-context the fold needs diag(1/a): a BN with gamma 0 somewhere is left as it is."""
    model = randomize(zoo.create_model("saconv_resnet_tiny")).eval()
    with torch.no_grad():
        model.blocks[0].bn1.weight[3] = 0.0
    result = fuse(model, inputs(X64))
    assert result.report.max_rel_err <= TOL and result.report.ops_after["batch_norm"] == 1


def test_saconv_weight_standardization_is_folded_and_the_switch_stays(zoo_fused):
    model, result = zoo_fused("saconv_resnet_tiny")
    report = result.report
    # Weight standardization (mean, var, sqrt, div on the weight) is gone: constant weights remain.
    for op in ("var", "sqrt", "div", "mean"):
        assert op in report.ops_before or op == "mean"
        assert op not in report.ops_after
    # The two convs of each SAConv: one per branch, the small dilation and the large one.
    fused_convs = {n: m for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d)
                   and n.startswith("blocks.0.conv1") and m.weight.shape == model.blocks[0].conv1.weight.shape}
    small = [m for m in fused_convs.values() if m.dilation == (1, 1)]
    large = [m for m in fused_convs.values() if m.dilation == (3, 3)]  # emitted dilated, not as a dense 7x7
    assert len(small) == len(large) == 1
    # The switch multiplies by an input-dependent tensor: it stays, and the report says why.
    gates = [u for u in report.unfused if u.op == "mul" and "blocks.0.conv1" in u.reason]
    assert len(gates) == 2 and all("input-dependent" in u.reason for u in gates)
    assert report.ops_after["mul"] == report.ops_before["mul"]


# --- what must stay unfused ------------------------------------------------------------------------


def test_se_block_stays_unfused_with_its_reason(zoo_fused):
    model, result = zoo_fused("ghostnet_tiny")
    se_blocks = [n for n, m in model.named_modules() if n.endswith(".se") and m is not None]
    assert se_blocks
    noted = {b for b in se_blocks for u in result.report.unfused if u.reason.find(f" in {b} ") >= 0}
    assert noted == set(se_blocks)
    assert result.report.ops_after["hardsigmoid"] == result.report.ops_before["hardsigmoid"] == len(se_blocks)


class DenseAndDepthwise(nn.Module):
    """1x1 conv + depthwise 3x3 conv on the same input: one dense 3x3 would cost ~9x the 1x1."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.pw = nn.Conv2d(c, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.pw(x) + self.dw(x))


def test_cost_check_keeps_a_depthwise_branch_separate():
    model = randomize(DenseAndDepthwise()).eval()
    report = fuse(model, inputs((1, 16, 20, 20))).report
    assert report.max_rel_err <= TOL
    assert report.ops_after.get("conv3x3") == 1 and report.ops_after.get("conv1x1") == 1
    assert any("raise the cost" in u.reason for u in report.unfused)
    assert report.flops_after <= report.flops_before


def test_ghost_module_keeps_its_cheap_depthwise_conv():
    model = randomize(GhostModule(16, 32, relu=False)).eval()
    result = fuse(model, inputs((1, 16, 15, 17)))
    assert result.report.max_rel_err <= TOL
    convs = convs_in_order(result.model)
    assert [c.groups for c in convs] == [1, 16]  # primary 1x1 dense, cheap 3x3 still depthwise
    assert result.report.flops_after <= result.report.flops_before
    assert "batch_norm" not in result.report.ops_after


# --- timm --------------------------------------------------------------------------------------------


TIMM = ["repvgg_a0", "repvgg_b1g4", "mobileone_s0", "ghostnet_100", "resnet18"]
TIMM_X = (1, 3, 64, 64)
TIMM_ODD = (1, 3, 57, 71)


@pytest.fixture(scope="module")
def timm_fused():
    timm = pytest.importorskip("timm")
    cache: dict[str, tuple[nn.Module, object, nn.Module]] = {}

    def get(name: str):
        if name not in cache:
            model = randomize(timm.create_model(name, pretrained=False)).eval()
            result = fuse(model, inputs(TIMM_X))
            cache[name] = (model, result, _second_route(model))
        return cache[name]

    yield get
    cache.clear()


def _second_route(model: nn.Module) -> nn.Module:
    """timm's own reparameterization where the model has one, else torch.fx's conv+BN fuse."""
    from timm.utils.model import reparameterize_model as timm_reparameterize

    if any(callable(getattr(m, a, None)) for m in model.modules() for a in ("reparameterize", "switch_to_deploy")):
        deployed = timm_reparameterize(model)
        assert set(deployed.state_dict()) != set(model.state_dict())  # it really changed the model
        return deployed
    from torch.fx.experimental.optimization import fuse as torch_fuse

    folded = torch_fuse(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    return folded


@pytest.mark.parametrize("name", TIMM)
def test_timm_model_fuses_exactly_and_agrees_with_a_second_route(name, timm_fused):
    model, result, second = timm_fused(name)
    report = result.report
    assert report.method == "fx" and report.max_rel_err <= TOL
    assert "batch_norm" not in report.ops_after and report.flops_after <= report.flops_before
    x = inputs(TIMM_ODD, seed=5)
    out = run(result.model, x)
    assert rel_err(out, run(model, x)) <= TOL
    assert rel_err(out, run(second, x)) <= TOL
    # torch.fx's fuse folds only Conv2d->BatchNorm2d module pairs (not timm's functional BatchNormAct2d).
    own_deploy = name.startswith(("repvgg", "mobileone"))
    second_params = sum(p.numel() for p in second.parameters())
    assert report.params_after == second_params if own_deploy else report.params_after <= second_params
    # No dead BN statistics left in the checkpoint (a module fx traced through keeps its tensors otherwise).
    assert not [k for k in result.model.state_dict() if k.endswith(("running_mean", "running_var"))]


@pytest.mark.parametrize("name,blocks", [("repvgg_a0", 22), ("repvgg_b1g4", 28)])
def test_timm_repvgg_is_a_plain_3x3_stack_with_timms_weights(name, blocks, timm_fused):
    model, result, deployed = timm_fused(name)
    assert result.report.ops_after == {"conv3x3": blocks, "relu": blocks, "global_pool": 1, "flatten": 1,
                                       "linear": 1}
    ours, theirs = convs_in_order(result.model), convs_in_order(deployed)
    assert len(ours) == len(theirs) == blocks
    for a, b in zip(ours, theirs):
        assert (a.groups, a.stride, a.padding) == (b.groups, b.stride, b.padding)
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.bias, b.bias, rtol=1e-4, atol=1e-5)
    if name == "repvgg_b1g4":
        assert {c.groups for c in ours} == {1, 4}


def test_timm_mobileone_collapses_every_block(timm_fused):
    _, result, deployed = timm_fused("mobileone_s0")
    ops = result.report.ops_after
    assert "add" not in ops and ops["relu"] == ops["conv3x3"] + ops["conv1x1"]
    assert [c.groups for c in convs_in_order(result.model)] == [c.groups for c in convs_in_order(deployed)]


def test_timm_ghostnet_keeps_se_and_depthwise_branches(timm_fused):
    _, result, _ = timm_fused("ghostnet_100")
    report = result.report
    assert report.ops_after["hardsigmoid"] == report.ops_before["hardsigmoid"] > 0
    assert any("input-dependent" in u.reason and ".se" in u.reason for u in report.unfused)
    assert any("raise the cost" in u.reason for u in report.unfused)
    assert report.flops_after == report.flops_before  # BN folding only: nothing merged into costlier convs


# --- the known traps of the reference implementations ------------------------------------------------


def test_trap_train_mode_is_fused_with_running_statistics():
    model = randomize(zoo.create_model("repvgg_tiny"))
    model.train()
    before = state_copy(model)
    result = fuse(model, inputs(X64))
    assert any("training mode" in n for n in result.report.notes)
    assert result.report.max_rel_err <= TOL
    x = inputs(ODD, seed=7)
    eval_ref = run(copy.deepcopy(model).eval(), x)
    train_out = run(copy.deepcopy(model), x)  # batch statistics
    out = run(result.model, x)
    assert rel_err(out, eval_ref) <= TOL
    assert rel_err(out, train_out) > 1e-2  # folding batch statistics would have been caught
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


DILATED = {
    "repvgg": lambda: RepVGGBlock(8, 8, 3, dilation=2),
    "repvgg_s2": lambda: RepVGGBlock(8, 16, 3, stride=2, dilation=2, groups=2),
    "acb": lambda: ACBlock(8, 8, 3, dilation=2),
    "dbb": lambda: DiverseBranchBlock(8, 8, 3, stride=2, dilation=2, groups=2),
    "mobileone": lambda: MobileOneBlock(8, 8, 3, dilation=3, groups=8),
}


@pytest.mark.parametrize("kind", sorted(DILATED))
def test_trap_dilation_in_training_branches(kind):
    block = randomize(DILATED[kind]()).eval()
    result = fuse(block, inputs((1, 8, 17, 14)))
    x = inputs((2, 8, 19, 23), seed=8)
    out = run(result.model, x)
    assert rel_err(out, run(block, x)) <= TOL
    assert rel_err(out, run(reparameterize_model(block), x)) <= TOL
    convs = convs_in_order(result.model)
    assert len(convs) == 1 and convs[0].dilation != (1, 1) and convs[0].kernel_size == (3, 3)
    assert result.report.flops_after <= result.report.flops_before


class HorVer(nn.Module):
    """3x3 + 1x3 + 3x1 + (1x1 -> asymmetric F.pad -> 2x3): each H/W swap shows on a non-square input."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.square = nn.Conv2d(c, c, 3, padding=1)
        self.hor = nn.Conv2d(c, c, (1, 3), padding=(0, 1))
        self.ver = nn.Conv2d(c, c, (3, 1), padding=(1, 0))
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.tail = nn.Conv2d(c, c, (2, 3), padding=0)

    def forward(self, x):
        padded = F.pad(self.pw(x), (1, 1, 1, 0))  # left, right, top, bottom
        return self.square(x) + self.hor(x) + self.ver(x) + self.tail(padded)


def test_trap_swapped_hw_padding_for_non_square_kernels():
    model = HorVer().eval()
    result = fuse(model, inputs((1, 4, 11, 16)))
    assert result.report.ops_after == {"conv3x3": 1}
    x = inputs((2, 4, 13, 8), seed=9)
    assert rel_err(run(result.model, x), run(model, x)) <= TOL
    # ACNet with non-square, non-default padding: generic route and the block's own deploy code agree.
    acb = randomize(ACBlock(6, 6, 3, padding=(2, 1))).eval()
    fused = fuse(acb, inputs((1, 6, 9, 12))).model
    x = inputs((1, 6, 15, 10), seed=10)
    ref = run(acb, x)
    assert ref.shape[-2:] == (17, 10)
    assert rel_err(run(fused, x), ref) <= TOL and rel_err(run(reparameterize_model(acb), x), ref) <= TOL


def test_trap_deploy_called_twice():
    model = randomize(zoo.create_model("mobileone_tiny")).eval()
    once = fuse(model, inputs(X64))
    twice = fuse(once.model, inputs(X64))
    assert twice.report.ops_after == twice.report.ops_before == once.report.ops_after
    assert twice.report.max_rel_err <= TOL
    x = inputs(ODD, seed=11)
    assert rel_err(run(twice.model, x), run(model, x)) <= TOL
    # The zoo's own deploy code: a second call is a no-op, and the generic fuser leaves its result alone.
    deployed = reparameterize_model(model)
    again = reparameterize_model(deployed)
    assert all(torch.equal(a, b) for a, b in zip(deployed.state_dict().values(), again.state_dict().values()))
    on_deployed = fuse(deployed, inputs(X64))
    assert on_deployed.report.ops_after == on_deployed.report.ops_before
    assert on_deployed.report.max_rel_err <= TOL


@pytest.mark.parametrize("padding", [2, (2, 1), (1, 2)])
def test_trap_padding_not_k_over_2(padding):
    block = randomize(RepVGGBlock(8, 8, 3, padding=padding)).eval()
    result = fuse(block, inputs((1, 8, 12, 9)))
    assert result.report.ops_after == {"conv3x3": 1, "relu": 1}
    x = inputs((2, 8, 11, 14), seed=12)
    ref = run(block, x)
    assert ref.shape[-2:] != x.shape[-2:]  # the padding really is not 'same'
    assert rel_err(run(result.model, x), ref) <= TOL
    assert rel_err(run(reparameterize_model(block), x), ref) <= TOL


def test_trap_padding_zero_crops_and_stays_exact():
    """RepVGG with padding 0: the 1x1 and identity branches read a cropped input. The generic route does not
    merge a crop (it says so) but stays exact; the block's own deploy code fuses it."""
    block = randomize(RepVGGBlock(8, 8, 3, padding=0)).eval()
    result = fuse(block, inputs((1, 8, 12, 9)))
    assert any("crop" in u.reason for u in result.report.unfused)
    x = inputs((2, 8, 11, 14), seed=13)
    ref = run(block, x)
    assert rel_err(run(result.model, x), ref) <= TOL
    assert rel_err(run(reparameterize_model(block), x), ref) <= TOL


# --- the fallback ------------------------------------------------------------------------------------


class DataDependent(nn.Module):
    """RepVGG blocks around Python control flow that depends on the data: fx cannot trace the whole."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = RepVGGBlock(3, 8, 3, stride=2)
        self.body = nn.Sequential(RepVGGBlock(8, 8, 3), RepVGGBlock(8, 16, 3, stride=2, groups=2))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        if float(y.mean()) > -1e9:  # always true, but only known at run time
            y = self.body(y)
        return self.head(y)


def test_untraceable_model_is_fused_module_by_module():
    model = randomize(DataDependent()).eval()
    with pytest.raises(Exception):
        fx.symbolic_trace(model)
    result = fuse(model, inputs((1, 3, 32, 32)))
    report = result.report
    assert report.method == "modules"
    assert any("torch.fx could not trace" in n for n in report.notes)
    assert report.max_rel_err <= TOL
    assert "batch_norm" not in report.ops_after and report.ops_after["conv3x3"] == 3
    assert len(report.regions) == 3
    x = inputs((2, 3, 29, 35), seed=14)
    assert rel_err(run(result.model, x), run(model, x)) <= TOL
    assert isinstance(model.stem.conv_1x1, nn.Module)  # the original keeps its branches
