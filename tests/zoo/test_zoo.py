"""The zoo's training-time blocks and families, and their own deploy code (edgerep/zoo).

Every check runs on randomized BN statistics/affines (so each branch contributes) and odd, non-square
inputs (borders are where wrong paddings show), comparing the deploy form to the training form in eval.
"""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from edgerep import zoo
from edgerep.zoo.acb import ACBlock
from edgerep.zoo.common import ConvBN, bn_zero_response, const_pad, reparameterize_model
from edgerep.zoo.dbb import DiverseBranchBlock
from edgerep.zoo.ghostnet import GhostBottleneck, GhostModule
from edgerep.zoo.mobileone import MobileOneBlock
from edgerep.zoo.orepa import OREPABlock
from edgerep.zoo.repvgg import RepVGGBlock
from edgerep.zoo.saconv import SACBasicBlock, SAConv2d
from tests.reparam_helpers import randomize, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REL_TOL = 1e-4
TINY = ["repvgg_tiny", "acb_resnet_tiny", "dbb_resnet_tiny", "orepa_resnet_tiny", "mobileone_tiny",
        "ghostnet_tiny", "saconv_resnet_tiny"]


def check_deploy_equivalent(make, x: torch.Tensor) -> nn.Module:
    """Shared checks for a block or a model factory `make(deploy: bool)`; returns the fused module."""
    torch.manual_seed(0)
    model = randomize(make(False)).eval()
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
        assert rel_err(out, ref) <= REL_TOL, rel_err(out, ref)
        # Twice is a no-op.
        before = {k: v.clone() for k, v in fused.state_dict().items()}
        reparameterize_model(fused, inplace=True)
        after = fused.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        # The deploy form built directly has exactly the fused keys and computes the same.
        deployed = make(True).eval()
        assert set(deployed.state_dict()) == set(fused.state_dict())
        deployed.load_state_dict(fused.state_dict(), strict=True)
        assert torch.equal(deployed(x), out)
        # fx traces both forms.
        assert torch.allclose(torch.fx.symbolic_trace(model)(x), ref, rtol=0, atol=1e-6 * ref.abs().max())
        assert torch.allclose(torch.fx.symbolic_trace(fused)(x), out, rtol=0, atol=1e-6 * out.abs().max())
    return fused


# --- blocks: stride, groups, dilation, non-default padding, non-square kernels ------------------------------

BLOCKS = {
    "repvgg": lambda d: RepVGGBlock(8, 8, deploy=d),
    "repvgg_s2_wider": lambda d: RepVGGBlock(8, 16, stride=2, deploy=d),
    "repvgg_g4": lambda d: RepVGGBlock(8, 8, groups=4, deploy=d),
    "repvgg_dw": lambda d: RepVGGBlock(8, 8, groups=8, deploy=d),
    "repvgg_dilation2": lambda d: RepVGGBlock(8, 8, dilation=2, groups=2, deploy=d),
    "repvgg_pad0": lambda d: RepVGGBlock(8, 8, padding=0, deploy=d),
    "repvgg_pad2": lambda d: RepVGGBlock(8, 8, padding=2, deploy=d),
    "repvgg_pad0_s2": lambda d: RepVGGBlock(8, 8, stride=2, padding=0, deploy=d),
    "acb": lambda d: ACBlock(8, 8, deploy=d),
    "acb_s2_g2": lambda d: ACBlock(8, 16, stride=2, groups=2, deploy=d),
    "acb_k5": lambda d: ACBlock(8, 8, 5, deploy=d),
    "acb_dilation2": lambda d: ACBlock(8, 8, 3, dilation=2, deploy=d),
    "acb_dilation_2x1": lambda d: ACBlock(8, 8, 3, dilation=(2, 1), deploy=d),
    "acb_pad_1x2": lambda d: ACBlock(8, 8, 3, padding=(1, 2), deploy=d),
    "acb_pad_0x1_s2": lambda d: ACBlock(8, 8, 3, stride=2, padding=(0, 1), deploy=d),
    "dbb": lambda d: DiverseBranchBlock(8, 8, deploy=d),
    "dbb_s2_g2": lambda d: DiverseBranchBlock(8, 16, stride=2, groups=2, deploy=d),
    "dbb_dw": lambda d: DiverseBranchBlock(8, 8, groups=8, deploy=d),
    "dbb_k5_internal": lambda d: DiverseBranchBlock(8, 8, 5, internal_channels=16, deploy=d),
    "dbb_dilation2": lambda d: DiverseBranchBlock(8, 8, dilation=2, deploy=d),
    "dbb_pad0": lambda d: DiverseBranchBlock(8, 8, padding=0, deploy=d),
    "dbb_pad2_s2": lambda d: DiverseBranchBlock(8, 8, stride=2, padding=2, deploy=d),
    "orepa": lambda d: OREPABlock(8, 8, act=True, deploy=d),
    "orepa_s2_g2": lambda d: OREPABlock(8, 16, stride=2, groups=2, deploy=d),
    "orepa_dilation2": lambda d: OREPABlock(8, 8, dilation=2, deploy=d),
    "orepa_pad0": lambda d: OREPABlock(8, 8, padding=0, deploy=d),
    "orepa_pad2": lambda d: OREPABlock(8, 8, padding=2, deploy=d),
    "mobileone_dw": lambda d: MobileOneBlock(8, 8, 3, groups=8, num_branches=3, deploy=d),
    "mobileone_dw_s2": lambda d: MobileOneBlock(8, 8, 3, stride=2, groups=8, num_branches=2, deploy=d),
    "mobileone_pw": lambda d: MobileOneBlock(8, 8, 1, num_branches=3, deploy=d),
    "mobileone_pw_wider": lambda d: MobileOneBlock(8, 16, 1, num_branches=2, deploy=d),
    "mobileone_dilation2_pad1": lambda d: MobileOneBlock(8, 8, 3, padding=1, dilation=2, groups=8, deploy=d),
    "ghost_module": lambda d: GhostModule(8, 12, deploy=d),
    "ghost_bottleneck_id": lambda d: GhostBottleneck(8, 16, 8, deploy=d),
    "ghost_bottleneck_s2_se": lambda d: GhostBottleneck(8, 24, 12, 5, stride=2, se_ratio=0.25, deploy=d),
    "saconv_block": lambda d: SACBasicBlock(8, 8, deploy=d),
    "saconv_block_s2": lambda d: SACBasicBlock(8, 16, stride=2, deploy=d),
    "saconv_g2_bias_sigmoid": lambda d: SAConv2d(8, 8, 3, groups=2, bias=True, sigmoid_switch=True, deploy=d),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_deploy_form_is_exact(name):
    x = torch.randn(2, 8, 13, 11)
    check_deploy_equivalent(BLOCKS[name], x)


@pytest.mark.parametrize("name", ["repvgg", "acb", "dbb", "orepa", "mobileone_dw"])
def test_multi_branch_block_becomes_one_conv_named_reparam(name):
    fused = reparameterize_model(randomize(BLOCKS[name](False)))
    params = {k for k, _ in fused.named_parameters()}
    assert params == {"reparam.weight", "reparam.bias"}
    assert isinstance(fused.reparam, nn.Conv2d)


def test_acb_branch_paddings_are_not_swapped():
    b = ACBlock(4, 4, 3, padding=(1, 2), dilation=(2, 1))
    # 1x3 branch: H padding shifted by the centre offset (2), W padding kept; 3x1 the other way round.
    assert b.hor.conv.kernel_size == (1, 3) and b.hor.conv.padding == (0, 2) and b.hor.crop == [0, 0, -1, -1]
    assert b.ver.conv.kernel_size == (3, 1) and b.ver.conv.padding == (1, 1)
    y = b.eval()(torch.randn(1, 4, 9, 16))
    assert y.shape == (1, 4, 9 + 2 - 4, 16 + 4 - 2)


def test_dbb_middle_tensor_is_padded_with_bn_response_not_zero():
    blk = randomize(DiverseBranchBlock(4, 4)).eval()
    branch = blk.dbb_1x1_kxk
    x = torch.randn(1, 4, 9, 7)
    with torch.no_grad():
        y = branch.bn1(branch.conv1(x))
        c = bn_zero_response(branch.bn1)
        assert torch.allclose(c, branch.bn1(torch.zeros(1, 4, 1, 1)), atol=1e-6)
        zero_padded = branch.bn2(branch.conv2(F.pad(y, branch.pad)))
        const_padded = branch.bn2(branch.conv2(const_pad(y, branch.pad, c)))
        # Interior identical, border differs: zero padding would not be one kxk conv on the input.
        assert torch.allclose(zero_padded[..., 1:-1, 1:-1], const_padded[..., 1:-1, 1:-1], atol=1e-6)
        assert (zero_padded - const_padded).abs().max() > 1e-2
        k, b = branch.fused_kernel_bias()
        direct = F.conv2d(x.double(), k, b, padding=1).float()
        assert rel_err(direct, const_padded) < REL_TOL


def test_ghostnet_keeps_primary_and_cheap_apart_and_se_unfused():
    fused = reparameterize_model(randomize(zoo.create_model("ghostnet_tiny")))
    keys = set(fused.state_dict())
    assert "blocks.0.0.ghost1.primary_conv.conv.bias" in keys
    assert "blocks.0.0.ghost1.cheap.conv.bias" in keys
    assert not any(".bn." in k for k in keys)
    cheap = fused.blocks[0][0].ghost1.cheap.conv
    assert cheap.groups == cheap.in_channels  # still depthwise
    assert any(".se.conv_reduce." in k for k in keys)


def test_saconv_deploy_has_constant_weights_and_folded_bn():
    fused = reparameterize_model(randomize(SACBasicBlock(8, 8)))
    keys = set(fused.state_dict())
    assert {"conv1.reparam.weight", "conv1.reparam.bias", "conv1.reparam_1.weight", "conv1.reparam_1.bias"} <= keys
    assert not any(k.startswith("bn1") or k in ("conv1.weight", "conv1.weight_diff") for k in keys)
    assert fused.conv1.reparam_1.dilation == (3, 3) and fused.conv1.switch.kernel_size == (5, 5)
    # No standardization and no avg-pool left in the deploy graph.
    graph = torch.fx.symbolic_trace(fused.conv1).graph
    assert not any(n.target in ("var", "mean", "flatten") for n in graph.nodes)
    assert not any(getattr(n.target, "__name__", "") == "avg_pool2d" for n in graph.nodes)


def test_saconv_fold_refuses_training_form():
    with pytest.raises(RuntimeError):
        SAConv2d(4, 4).fold_following_bn(nn.BatchNorm2d(4))


# --- families ---------------------------------------------------------------------------------------------


def test_registered_names():
    names = set(zoo.model_names())
    expected = {f"repvgg_{v}" for v in ("a0", "a1", "a2", "b0", "b1", "b2", "b3", "b1g2", "b1g4", "b2g2", "b2g4",
                                         "b3g2", "b3g4")}
    assert expected | set(TINY) | {"ghostnet_100"} <= names


@pytest.mark.parametrize("name", TINY)
def test_family_deploy_form_is_exact(name):
    x = torch.randn(2, 3, 33, 37)
    fused = check_deploy_equivalent(lambda d: zoo.create_model(name, deploy=d), x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("name", ["acb_resnet_tiny", "dbb_resnet_tiny", "orepa_resnet_tiny"])
def test_family_with_grouped_convs(name):
    check_deploy_equivalent(lambda d: zoo.create_model(name, deploy=d, groups=4), torch.randn(1, 3, 31, 29))


@pytest.mark.parametrize("name", TINY)
def test_train_mode_model_fuses_with_running_stats(name):
    torch.manual_seed(1)
    model = randomize(zoo.create_model(name), seed=1).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    fused = reparameterize_model(model)
    assert model.training and not fused.training  # the caller's model keeps its mode (deep copy)
    assert all(torch.equal(stats[k], model.state_dict()[k]) for k in stats)
    x = torch.randn(2, 3, 33, 37)
    with torch.no_grad():
        ref = model.eval()(x)
        assert rel_err(fused(x), ref) <= REL_TOL


def test_repvgg_deploy_key_convention():
    keys = set(zoo.create_model("repvgg_tiny", deploy=True).state_dict())
    assert {k for k in keys if k.startswith("stages.1.0.")} == {"stages.1.0.reparam.weight", "stages.1.0.reparam.bias"}
    assert {"stem.reparam.weight", "head.fc.weight"} <= keys
    resnet = set(zoo.create_model("acb_resnet_tiny", deploy=True).state_dict())
    assert {"stages.1.0.conv1.reparam.weight", "stages.1.0.shortcut.conv.bias"} <= resnet


def test_repvgg_groups_on_the_papers_layers():
    with torch.device("meta"):
        m = zoo.create_model("repvgg_b1g4")
    blocks = [b for stage in m.stages for b in stage]
    groups = [b.conv_kxk.conv.groups for b in blocks]
    assert groups[1::2] == [4] * (len(blocks) // 2) and set(groups[0::2]) == {1}  # layers 2, 4, ... (1-based)


# Deploy parameter counts from the RepVGG paper (Table 4, millions) and GhostNet 1.0x (5.2M); the training
# forms from timm 1.0's repvgg_a0 (9.11M) and repvgg_b0 (15.82M), which share the paper's architecture.
PAPER_DEPLOY_M = {"repvgg_a0": 8.30, "repvgg_a1": 12.78, "repvgg_a2": 25.49, "repvgg_b0": 14.33,
                  "repvgg_b1": 51.82, "repvgg_b1g2": 41.36, "repvgg_b1g4": 36.12, "repvgg_b2": 80.31,
                  "repvgg_b2g4": 55.77, "repvgg_b3": 110.96, "repvgg_b3g4": 75.62}
TRAIN_M = {"repvgg_a0": 9.11, "repvgg_b0": 15.82, "ghostnet_100": 5.18}


def _params_m(name: str, deploy: bool) -> float:
    with torch.device("meta"):  # no memory, no init cost
        model = zoo.create_model(name, deploy=deploy)
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize("name", sorted(PAPER_DEPLOY_M))
def test_repvgg_deploy_params_match_paper(name):
    assert _params_m(name, True) == pytest.approx(PAPER_DEPLOY_M[name], rel=0.005)


@pytest.mark.parametrize("name", sorted(TRAIN_M))
def test_training_form_params(name):
    assert _params_m(name, False) == pytest.approx(TRAIN_M[name], rel=0.005)


@pytest.mark.parametrize("name", ["repvgg_b2g2", "repvgg_b3g2"])
def test_grouped_variants_between_their_neighbours(name):
    # Not in the paper's table: g2 must sit between the dense and the g4 model.
    base = name[:-2]
    assert _params_m(base + "g4", True) < _params_m(name, True) < _params_m(base, True)


def test_fx_traces_every_large_family_in_training_form():
    # Tracing needs no real weights; meta tensors keep it cheap for the ImageNet-sized models.
    for name in ("repvgg_a0", "repvgg_b1g4", "ghostnet_100"):
        with torch.device("meta"):
            model = zoo.create_model(name)
        gm = torch.fx.symbolic_trace(model)
        assert any(n.op == "call_module" for n in gm.graph.nodes)


def test_reparameterize_model_inplace_returns_same_object():
    model = zoo.create_model("repvgg_tiny")
    assert reparameterize_model(model, inplace=True) is model
    assert model.stem.reparam is not None and model.stem.conv_kxk is None


def test_convbn_deploy_is_conv_with_bias():
    cb = randomize(ConvBN(4, 6, 3, stride=2)).eval()
    x = torch.randn(1, 4, 11, 9)
    ref = cb(x)
    cb.reparameterize()
    assert cb.bn is None and cb.conv.bias is not None
    assert rel_err(cb(x), ref) <= REL_TOL
    assert set(cb.state_dict()) == {"conv.weight", "conv.bias"}
