"""Which tracer reads a model, and what each route folds.

torch.fx first; torch.export when a forward reads a shape into Python (official OREPA's `dwsc2full` does
`int(t / groups)` on `weight.size()`); module by module when neither reads the whole model, where a module that is
"one convolution with a kernel computed from its parameters" still becomes a conv and a BN fed by a conv's output
still folds. And BatchNorm1d beside a Linear (LeViT) folds on the graph routes.
"""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgerep import fuse
from tests.reparam_helpers import inputs, randomize, rel_err, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-5


class OfficialStyleOREPA(nn.Module):
    """Written the way JUGGHM/OREPA_CVPR2022's `OREPA` block is: the kernel is generated every forward from branch
    parameters (an origin kxk, a 1x1 averaged over kxk, a 1x1 padded to kxk, a depthwise-separable pair expanded by
    `dwsc2full`, each weighted per output channel), and `dwsc2full` reads the weight's size into Python ints. Then
    one conv, BN and ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cin * 7 + cout + stride + groups)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=gen) * 0.2)

        self.k, self.stride, self.groups = k, stride, groups
        self.dw_groups = cin // groups
        self.weight_origin = param(cout, cin // groups, k, k)
        self.weight_avg = param(cout, cin // groups, 1, 1)
        self.weight_1x1 = param(cout, cin // groups, 1, 1)
        self.weight_dw = param(2 * self.dw_groups, 1, k, k)
        self.weight_pw = param(cout, 2 * self.dw_groups, 1, 1)
        self.vector = nn.Parameter(torch.rand(4, cout, generator=gen) + 0.25)
        self.bn = nn.BatchNorm2d(cout)
        self.nonlinear = nn.ReLU()

    def dwsc2full(self, weight_dw: torch.Tensor, weight_pw: torch.Tensor, groups: int) -> torch.Tensor:
        t, ig, h, w = weight_dw.size()
        o, _, _, _ = weight_pw.size()
        tg = int(t / groups)  # what torch.fx cannot trace: a Proxy has no int()
        i = int(ig * groups)
        weight_dw = weight_dw.view(groups, tg, ig, h, w)
        weight_pw = weight_pw.squeeze().view(o, groups, tg)
        return torch.einsum("gtihw,ogt->ogihw", weight_dw, weight_pw).reshape(o, i, h, w)

    def weight_gen(self) -> torch.Tensor:
        k = self.k
        origin = torch.einsum("oihw,o->oihw", self.weight_origin, self.vector[0])
        avg = torch.einsum("oihw,o->oihw", self.weight_avg.expand(-1, -1, k, k) / (k * k), self.vector[1])
        one = F.pad(self.weight_1x1, [k // 2] * 4) * self.vector[2].view(-1, 1, 1, 1)
        dws = torch.einsum("oihw,o->oihw", self.dwsc2full(self.weight_dw, self.weight_pw, self.dw_groups),
                           self.vector[3])
        return origin + avg + one + dws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight_gen(), None, self.stride, self.k // 2, 1, self.groups)
        return self.nonlinear(self.bn(out))


def orepa_net() -> nn.Module:
    """Groups 1 and 4, stride 1 and 2."""
    return nn.Sequential(OfficialStyleOREPA(8, 16, stride=2, groups=4), OfficialStyleOREPA(16, 16),
                         OfficialStyleOREPA(16, 32, stride=2), OfficialStyleOREPA(32, 32, groups=4))


def test_official_style_orepa_is_traced_by_torch_export_and_collapses_exactly():
    model = randomize(orepa_net()).eval()
    with pytest.raises(TypeError):
        fx.symbolic_trace(model)  # the shape read into Python
    result = fuse(model, inputs((1, 8, 32, 32)))
    report = result.report
    assert report.method == "export"
    assert any("torch.fx could not trace" in n for n in report.notes)
    assert report.max_rel_err <= TOL and len(report.checked_shapes) == 2  # the example and an odd size
    # each block: one conv with the BN folded, nothing of the weight generation left
    assert report.ops_after == {"conv3x3": 4, "relu": 4}
    assert report.ops_before["batch_norm"] == 4 and report.ops_before["einsum"] == 16
    assert [(r.name, r.modules, r.groups, r.stride) for r in report.regions] == [
        ("0.reparam", ["0", "0.bn"], 4, (2, 2)), ("1.reparam", ["1", "1.bn"], 1, (1, 1)),
        ("2.reparam", ["2", "2.bn"], 1, (2, 2)), ("3.reparam", ["3", "3.bn"], 4, (1, 1))]
    assert not report.unfused
    for shape in ((2, 8, 45, 29), (3, 8, 64, 48)):  # sizes the fuser never saw
        x = inputs(shape, seed=5)
        assert rel_err(run(result.model, x), run(model, x)) <= TOL


def test_the_export_route_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from edgerep.export.onnx_export import export_onnx

    model = randomize(orepa_net()).eval()
    result = fuse(model, inputs((1, 8, 32, 32)))
    path = export_onnx(result.model, inputs((1, 8, 32, 32)), tmp_path / "m.onnx", opset=17, dynamic_batch=True)
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["Conv", "Relu"] * 4
    x = inputs((2, 8, 32, 32), seed=3)  # a dynamic batch; the spatial size is the exported one
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert rel_err(torch.from_numpy(out), run(model, x)) <= 1e-4


class SizeBranch(OfficialStyleOREPA):
    """Takes another kernel on small inputs: the function itself changes with the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_gen()
        if x.shape[-1] < 24:
            w = w.flip(-1)
        return self.nonlinear(self.bn(F.conv2d(x, w, None, self.stride, self.k // 2, 1, self.groups)))


def test_a_forward_that_branches_on_the_input_size_is_refused_on_the_export_route():
    model = randomize(nn.Sequential(SizeBranch(8, 16), nn.Conv2d(16, 4, 1))).eval()
    result = fuse(model, inputs((1, 8, 32, 32)))
    report = result.report
    assert report.method == "modules"
    refused = [n for n in report.notes if "torch.export" in n and "specialised on the example shape" in n]
    assert len(refused) == 1 and "at 2x8x" in refused[0], report.notes
    assert report.max_rel_err <= TOL  # the fallback keeps it exact at both sizes
    small, large = inputs((1, 8, 20, 20), seed=2), inputs((1, 8, 40, 40), seed=2)
    assert rel_err(run(result.model, small), run(model, small)) <= TOL
    assert rel_err(run(result.model, large), run(model, large)) <= TOL


# --- module by module -----------------------------------------------------------------------------------


class MaxNormConv(nn.Module):
    """A conv whose kernel is scaled by a Python float read off its own parameter: no tracer reads it (fx cannot
    float() a Proxy, torch.export cannot read a value), yet its effect is one convolution."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cin + cout)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3, generator=gen))
        self.bias = nn.Parameter(torch.randn(cout, generator=gen) * 0.1)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / float(self.weight.abs().max())
        return F.conv2d(x, self.weight * scale, self.bias, self.stride, 1)


class DynamicConv(nn.Module):
    """A kernel computed from the input (CondConv-style): never a constant conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * x.mean().sigmoid(), None, 1, 1)


class Gated(nn.Module):
    """Python control flow on the data around its layers, so the whole model is read module by module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = MaxNormConv(3, 8, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.plain = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dyn = DynamicConv(8)
        self.bn3 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        if float(y.mean()) > -1e9:  # always true, known only at run time
            y = self.act(self.bn2(self.plain(y)))
        return self.bn3(self.dyn(y))


def test_a_module_no_tracer_reads_still_becomes_a_conv_and_the_bn_after_it_folds():
    model = randomize(Gated()).eval()
    result = fuse(model, inputs((1, 3, 32, 32)))
    report, fused = result.report, result.model
    assert report.method == "modules" and report.max_rel_err <= TOL
    assert type(fused) is Gated  # kept its own class and forward
    assert type(fused.conv) is nn.Conv2d and fused.conv.stride == (2, 2)
    assert isinstance(fused.bn, nn.Identity) and isinstance(fused.bn2, nn.Identity)  # folded into conv / plain
    by_name = {r.name: r.modules for r in report.regions}
    assert by_name == {"conv": ["conv", "bn"], "plain": ["plain", "bn2"]}
    # the input-dependent kernel stays, and so does the BN after it (its input is no conv's output)
    assert type(fused.dyn) is DynamicConv and isinstance(fused.bn3, nn.BatchNorm2d)
    assert [u.node for u in report.unfused if u.op == "batch_norm"] == ["bn3"]
    x = inputs((2, 3, 45, 29), seed=8)
    assert rel_err(run(fused, x), run(model, x)) <= TOL


class ResidualReadsRaw(nn.Module):
    """The conv's raw output is also read by a residual: folding the BN would change that reader."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if float(x.mean()) > -1e9:
            return self.bn(y) + y
        return y


def test_a_bn_is_not_folded_when_something_else_reads_the_conv_output():
    model = randomize(ResidualReadsRaw()).eval()
    result = fuse(model, inputs((1, 4, 16, 16)))
    assert result.report.method == "modules" and result.report.max_rel_err <= TOL
    assert isinstance(result.model.bn, nn.BatchNorm2d)


# --- Linear + BatchNorm1d -------------------------------------------------------------------------------


def randomize_bn1d(model: nn.Module, seed: int = 3) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


class LinearNorm(nn.Module):
    """LeViT's: BN over the flattened tokens, reshaped back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class LinearNormResidual(LinearNorm):
    """The Linear's raw output is also read by a residual: the BN cannot go into the Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y) + y


class Tokens(nn.Module):
    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.mix = LinearNormResidual(16, 32) if residual else LinearNorm(16, 32)
        self.act = nn.GELU()
        self.out = LinearNorm(32, 16)
        self.head_bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C)
        pooled = self.out(self.act(self.mix(t))).mean(1)
        return self.head(self.drop(self.head_bn(pooled))) + pooled.sum(1, keepdim=True)  # pooled read twice


class TokensReadingShape(Tokens):
    """The same model, its forward reading a weight's shape into Python: torch.fx cannot trace it, torch.export
    can. (An `int()` of an input size would pin that size in the exported graph, and the route would be refused.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = int(self.stem.weight.size(0))  # a parameter's shape: a number to torch.export
        t = self.stem(x).flatten(2).transpose(1, 2).reshape(x.shape[0], -1, channels)
        pooled = self.out(self.act(self.mix(t))).mean(1)
        return self.head(self.drop(self.head_bn(pooled))) + pooled.sum(1, keepdim=True)


@pytest.mark.parametrize("cls, route", [(Tokens, "fx"), (TokensReadingShape, "export")])
def test_batchnorm1d_folds_into_the_linear_after_and_before_it(cls, route):
    model = randomize_bn1d(cls()).eval()
    result = fuse(model, inputs((1, 3, 32, 32)))
    report = result.report
    assert report.method == route and report.max_rel_err <= TOL
    assert report.ops_before["batch_norm"] == 3 and "batch_norm" not in report.ops_after
    # after a Linear (through LeViT's flatten/reshape_as), and before one (through an eval dropout; the BN's
    # input is read twice, its output once)
    linear_regions = sorted(tuple(r.modules) for r in report.regions if r.kernel == "linear")
    assert linear_regions == [("head_bn", "head"), ("mix.linear", "mix.bn"), ("out.linear", "out.bn")]
    x = inputs((3, 3, 48, 40), seed=4)
    assert rel_err(run(result.model, x), run(model, x)) <= TOL


def test_a_bn_stays_when_the_linear_output_is_read_elsewhere():
    model = randomize_bn1d(Tokens(residual=True)).eval()
    result = fuse(model, inputs((1, 3, 32, 32)))
    report = result.report
    assert report.method == "fx" and report.max_rel_err <= TOL
    assert report.ops_after["batch_norm"] == 1
    assert sorted(tuple(r.modules) for r in report.regions if r.kernel == "linear") == [
        ("head_bn", "head"), ("out.linear", "out.bn")]


def test_timm_levit_folds_every_batchnorm():
    timm = pytest.importorskip("timm")
    model = randomize_bn1d(randomize(timm.create_model("levit_128s", pretrained=False))).eval()
    bns = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    result = fuse(model, inputs((1, 3, 224, 224)))
    report = result.report
    assert report.method == "fx" and report.max_rel_err <= 1e-4
    assert bns == 52 and report.ops_before["batch_norm"] == 52 and "batch_norm" not in report.ops_after
    assert sum(r.kernel == "linear" for r in report.regions) == 48
