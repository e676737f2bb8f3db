"""The fuser on code written the way real users write it.

* Module-walking forwards (Ultralytics style: `for m in self.model: x = y[m.f] ...`): our own model in that
  style, and Ultralytics' real DetectionModel cross-checked against Ultralytics' own `fuse()`.
* Kernels computed in forward from parameters (online OREPA, weight norm old and new, weight
  standardization, LoRA `W + A @ B`): each collapses to one conv with the BN folded, and matches.
* What cannot be fused stays, and the report says which and why.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgerep import fuse
from tests.reparam_helpers import inputs, randomize, rel_err, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-5


def conv_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


# --- a detector in the Ultralytics style, written by us --------------------------------------------------


class ConvBNAct(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RepBlock(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN + identity BN, then SiLU: three branches that merge into one 3x3."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.point = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.skip = nn.BatchNorm2d(c)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.dense(x) + self.point(x) + self.skip(x))


class Concat(nn.Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.d = dim

    def forward(self, xs):
        return torch.cat(xs, self.d)


class Detect(nn.Module):
    """A head with its own attributes (nc, no, stride buffer, anchor cache); its shape-keyed cache is Python
    control flow on the input, which is why fx cannot trace YOLO-style models whole."""

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[float, ...]) -> None:
        super().__init__()
        self.nc, self.no, self.nl = nc, nc + 4, len(channels)
        self.register_buffer("stride", torch.tensor(strides))
        self.heads = nn.ModuleList(nn.Sequential(ConvBNAct(c, c, 3), nn.Conv2d(c, self.no, 1)) for c in channels)
        self.shape = None
        self.anchors = torch.empty(0)

    def forward(self, xs):
        if self.shape != xs[0].shape:
            self.anchors = torch.cat([torch.full((x.shape[2] * x.shape[3],), float(s))
                                      for x, s in zip(xs, self.stride)])
            self.shape = xs[0].shape
        y = torch.cat([head(x).flatten(2) for head, x in zip(self.heads, xs)], 2)
        box, cls = y.split((4, self.nc), 1)
        return torch.cat((box * self.anchors, cls.sigmoid()), 1)


class WalkingDetector(nn.Module):
    """Layers in a Sequential, each with `f` (where its input comes from), `i` (its index) and `type`; the
    forward walks them and routes by those attributes, as YOLOv5/v8 and RT-DETR do."""

    def __init__(self, nc: int = 3) -> None:
        super().__init__()
        layers = [
            (-1, ConvBNAct(3, 8, 3, 2)), (-1, ConvBNAct(8, 16, 3, 2)), (-1, RepBlock(16)),
            (-1, ConvBNAct(16, 32, 3, 2)), (-1, RepBlock(32)), (-1, WSConv2d(32, 32, 3, padding=1)),
            (-1, nn.Upsample(scale_factor=2.0)), ([-1, 2], Concat()), (-1, ConvBNAct(48, 16, 1)),
            ([8, 5], Detect(nc, (16, 32), (4.0, 8.0))),
        ]
        for i, (f, m) in enumerate(layers):
            m.f, m.i, m.type = f, i, type(m).__name__
        self.model = nn.Sequential(*(m for _, m in layers))
        self.save = {2, 5, 8}
        self.names = {i: f"class{i}" for i in range(nc)}

    def forward(self, x):
        y: list = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x) if not isinstance(m, Detect) else m(list(x))
            y.append(x if m.i in self.save else None)
        return x


def test_module_walking_forward_fuses_inside_its_own_modules():
    model = randomize(WalkingDetector()).eval()
    calls = []
    model.model[2].register_forward_hook(lambda m, i, o: calls.append(m.i))
    result = fuse(model, inputs((1, 3, 64, 64)))
    report, fused = result.report, result.model
    assert report.method == "modules" and report.max_rel_err <= TOL
    # The parent is the model's own class, running its own forward over the same objects and attributes.
    assert type(fused) is WalkingDetector and fused.save == model.save and fused.names == model.names
    for a, b in zip(model.model, fused.model):
        assert type(b) is type(a) and (b.f, b.i, b.type) == (a.f, a.i, a.type)
    head = fused.model[-1]
    assert (head.nc, head.no, head.nl) == (3, 7, 2) and torch.equal(head.stride, model.model[-1].stride)
    # Fused: no BN anywhere, each RepBlock one conv, each ConvBNAct one conv with a bias.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert "batch_norm" in report.ops_before and "batch_norm" not in report.ops_after
    assert [conv_count(fused.model[i]) for i in (2, 4)] == [1, 1]
    assert fused.model[0].conv.bias is not None and not hasattr(fused.model[0], "bn")
    # The weight-standardized layer stays a WSConv2d (a Conv2d) whose weight is now the standardized kernel.
    ws, ws_ref = fused.model[5], model.model[5]
    w = ws_ref.weight.detach()
    standardized = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
    assert type(ws) is WSConv2d and torch.allclose(ws.weight, standardized, atol=1e-6)
    assert torch.equal(ws.bias, ws_ref.bias.detach())
    assert conv_count(fused) == conv_count(model) - 2  # each RepBlock: 3x3 + 1x1 + identity -> one 3x3
    x = inputs((2, 3, 96, 64), seed=2)
    assert rel_err(run(fused, x), run(model, x)) <= TOL
    assert calls and set(calls) == {2}  # the hook on a fused layer still fires
    # A fused model fuses again to itself (deploy called twice).
    again = fuse(fused, inputs((1, 3, 64, 64)))
    assert again.report.max_rel_err <= TOL and again.report.ops_after == report.ops_after


class Untraceable(nn.Module):
    """Python control flow on the data around a BN that follows an abs(): nothing to fold it into."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        if float(x.mean()) > 1e9:
            return x
        return self.bn(x.abs())


def test_an_unfusable_submodule_stays_and_the_report_says_why():
    model = nn.Sequential(ConvBNAct(3, 8, 3), Untraceable(), ConvBNAct(8, 8, 3))
    model = randomize(model).eval()
    result = fuse(model, inputs((1, 3, 20, 20)))
    report = result.report
    assert report.method == "modules" and report.max_rel_err <= TOL
    kept = [u for u in report.unfused if u.node == "1.bn"]
    assert len(kept) == 1 and kept[0].op == "batch_norm" and "could not be traced" in kept[0].reason
    assert isinstance(result.model[1].bn, nn.BatchNorm2d)
    assert not hasattr(result.model[0], "bn") and not hasattr(result.model[2], "bn")


# --- Ultralytics' own DetectionModel ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolo():
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (pip install 'edgerep[ultralytics]')")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = randomize(DetectionModel("yolov8n.yaml", verbose=False)).eval()  # shipped yaml, random weights
    x = inputs((1, 3, 160, 160))
    return model, fuse(model, x)


def test_ultralytics_detection_model_fuses_and_agrees_with_its_own_fuse(yolo):
    from ultralytics.nn.modules.head import Detect as YoloDetect

    model, result = yolo
    report, fused = result.report, result.model
    assert report.method == "modules" and report.max_rel_err <= TOL
    assert report.ops_before["batch_norm"] > 50 and "batch_norm" not in report.ops_after
    assert type(fused) is type(model) and isinstance(fused.model[-1], YoloDetect)
    assert [(m.f, m.i, m.type) for m in fused.model] == [(m.f, m.i, m.type) for m in model.model]
    theirs = copy.deepcopy(model).fuse(verbose=False)  # Ultralytics' own conv+BN folding
    x = inputs((2, 3, 192, 128), seed=3)
    ours_out, theirs_out, ref = run(fused, x)[0], run(theirs, x)[0], run(model, x)[0]
    assert rel_err(ours_out, ref) <= TOL and rel_err(theirs_out, ref) <= TOL and rel_err(ours_out, theirs_out) <= TOL
    # Two independent routes, one checkpoint: the same keys and the same fused weights.
    ours_sd, theirs_sd = fused.state_dict(), theirs.state_dict()
    assert set(ours_sd) == set(theirs_sd)
    for key, value in theirs_sd.items():
        torch.testing.assert_close(ours_sd[key], value, rtol=1e-4, atol=1e-5)


# --- kernels computed in forward -------------------------------------------------------------------------


class OnlineOREPA(nn.Module):
    """OREPA's online re-parameterization: the kernel is rebuilt every forward from five parameter sets
    (a kxk kernel, a 1x1 padded to kxk, a 1x1->kxk pair composed per group by einsum, a kernel basis mixed
    per channel by einsum), weighted by branch scales, then ONE conv and BN."""

    def __init__(self, cin: int = 8, cout: int = 16, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        cg = cin // groups
        self.k, self.stride, self.groups = k, stride, groups
        self.w_kxk = nn.Parameter(torch.randn(cout, cg, k, k, generator=g) * 0.2)
        self.w_1x1 = nn.Parameter(torch.randn(cout, cg, 1, 1, generator=g) * 0.2)
        self.w_prior = nn.Parameter(torch.randn(cin, cg, 1, 1, generator=g) * 0.2)
        self.w_post = nn.Parameter(torch.randn(cout, cg, k, k, generator=g) * 0.2)
        self.basis = nn.Parameter(torch.randn(4, k, k, generator=g) * 0.3)
        self.coef = nn.Parameter(torch.randn(cout, cg, 4, generator=g) * 0.3)
        self.alpha = nn.Parameter(torch.rand(4, generator=g) + 0.5)
        self.bn = nn.BatchNorm2d(cout)

    def kernel(self) -> torch.Tensor:
        k, g, cout = self.k, self.groups, self.w_post.shape[0]
        w = self.alpha[0] * self.w_kxk + self.alpha[1] * F.pad(self.w_1x1, [k // 2] * 4)
        prior = self.w_prior.reshape(g, -1, self.w_prior.shape[1])
        post = self.w_post.reshape(g, cout // g, -1, k, k)
        w = w + self.alpha[2] * torch.einsum("gomhw,gmi->goihw", post, prior).reshape(cout, -1, k, k)
        return w + self.alpha[3] * torch.einsum("oib,bhw->oihw", self.coef, self.basis)

    def forward(self, x):
        return F.relu(self.bn(F.conv2d(x, self.kernel(), None, self.stride, self.k // 2, 1, self.groups)))


class WSConv2d(nn.Conv2d):
    """Weight standardization (BiT, NF-nets): the kernel is normalized per output channel every forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LoRAConv(nn.Module):
    """A frozen conv plus a low-rank update: W + scaling * (A @ B), then BN."""

    def __init__(self, cin: int = 8, cout: int = 16, k: int = 3, rank: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.base = nn.Conv2d(cin, cout, k, padding=k // 2)
        self.lora_a = nn.Parameter(torch.randn(cout, rank, generator=g) * 0.2)
        self.lora_b = nn.Parameter(torch.randn(rank, cin * k * k, generator=g) * 0.2)
        self.scaling = 0.5
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        w = self.base.weight + self.scaling * (self.lora_a @ self.lora_b).view_as(self.base.weight)
        return F.relu(self.bn(F.conv2d(x, w, self.base.bias, 1, self.base.padding)))


def _weight_norm_old() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in use in older checkpoints
        conv = nn.utils.weight_norm(nn.Conv2d(8, 16, 3, padding=1))
    return nn.Sequential(conv, nn.BatchNorm2d(16), nn.ReLU())


COMPUTED = {
    "orepa_online": OnlineOREPA,
    "orepa_online_s2_g2": lambda: OnlineOREPA(8, 16, 3, stride=2, groups=2),
    "weight_norm": lambda: nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 16, 3, padding=1)),
                                         nn.BatchNorm2d(16), nn.ReLU()),
    "weight_norm_old": _weight_norm_old,
    "weight_standardized": lambda: nn.Sequential(WSConv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                                 nn.ReLU()),
    "lora": LoRAConv,
}


@pytest.mark.parametrize("kind", sorted(COMPUTED))
def test_kernel_computed_in_forward_collapses_to_one_conv(kind):
    block = randomize(COMPUTED[kind]()).eval()
    result = fuse(block, inputs((1, 8, 13, 11)))
    report = result.report
    assert report.method == "fx" and report.max_rel_err <= TOL
    assert report.ops_after in ({"conv3x3": 1, "relu": 1},), report.ops_after  # the kernel math and BN are gone
    assert conv_count(result.model) == 1 and not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    # Only the fused conv's weight and bias are left: every branch parameter was folded away.
    assert len(result.model.state_dict()) == 2
    x = inputs((2, 8, 19, 14), seed=6)
    assert rel_err(run(result.model, x), run(block, x)) <= TOL


def test_online_orepa_fused_conv_is_named_like_the_zoo_deploy_forms():
    result = fuse(randomize(OnlineOREPA()).eval(), inputs((1, 8, 12, 12)))
    assert set(result.model.state_dict()) == {"reparam.weight", "reparam.bias"}


class LearnedTemperature(nn.Module):
    """A scale computed from a parameter (exp) after a nonlinearity: no conv to fold into, but the exp is
    still evaluated once instead of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.log_t = nn.Parameter(torch.full((1, 4, 1, 1), 0.3))

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.log_t.exp()


def test_parameter_only_computation_is_evaluated_once_even_where_nothing_fuses():
    model = LearnedTemperature().eval()
    result = fuse(model, inputs((1, 4, 9, 9)))
    assert "exp" in result.report.ops_before and "exp" not in result.report.ops_after
    assert result.report.max_rel_err <= TOL
