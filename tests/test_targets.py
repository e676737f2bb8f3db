"""Target profiles: the shipped ones load, bad ones fail with the file and field named."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from edgerep.backends import backend_for
from edgerep.backends.tensorrt.versions import version_matches as trt_version_matches
from edgerep.cpu.isa import host_cpu
from edgerep.errors import UserError
from edgerep.targets import DEFAULT_TARGET, list_targets, load_target, targets_dirs
from tests.paths import REPO

SHIPPED = {"openvino-cpu", "onnxruntime-cpu", "openvino-avx2", "onnxruntime-avx2", "tensorrt-10", "tensorrt-11",
           "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin", "jetson-thor", "jetson-agx-orin-jp7"}



def test_every_shipped_profile_loads_default_first():
    profiles = list_targets()
    assert {p.name for p in profiles} == SHIPPED
    assert profiles[0].name == DEFAULT_TARGET == "openvino-cpu"
    for prof in profiles:
        assert prof.source is not None and prof.source.stem == prof.name
        # a gate for every precision listed, none extra (bf16 is listed but not built on a CPU without BF16)
        assert set(prof.gates) == set(prof.precisions) | set(prof.unavailable)
        for gate in prof.gates.values():
            assert gate.min_cosine is not None and gate.min_top1_agreement is not None
        assert (prof.tensorrt is not None) == (prof.backend == "tensorrt")


def test_profile_facts():
    ov, ort = load_target("openvino-cpu"), load_target("onnxruntime-cpu")
    here = ["fp32", "bf16", "fp16", "int8"] if host_cpu().has_bf16 else ["fp32", "fp16", "int8"]
    assert ov.backend == "openvino" and ov.precisions == here and set(ov.unavailable) == {"bf16"} - set(here)
    assert ort.backend == "onnxruntime" and ort.precisions == ["fp32", "int8"]
    # gates tighten with precision
    assert ov.gates["fp32"].min_cosine > ov.gates["fp16"].min_cosine > ov.gates["int8"].min_cosine
    assert ov.gates["int8"].max_top1_drop == 1.0
    nano = load_target("jetson-nano")
    assert nano.opset == 13 and nano.tensorrt.version == "8.2" and nano.tensorrt.int8_mode == "calibrate"
    nx = load_target("jetson-xavier-nx")
    assert nx.opset == 17 and nx.tensorrt.version == "8.5" and nx.tensorrt.jetpack.startswith("5.1")
    assert nx.tensorrt.dla_core == 0
    orin_nano = load_target("jetson-orin-nano")
    assert orin_nano.tensorrt.version == "10.3" and orin_nano.tensorrt.dla_cores == 0 and orin_nano.tensorrt.dla_core is None
    agx = load_target("jetson-agx-orin")
    assert agx.tensorrt.version == "10.3" and agx.tensorrt.dla_core == 0
    trt = load_target("tensorrt")  # no TensorRT installed here: the alias's default, tensorrt-10
    assert trt.name == "tensorrt-10" and trt.precisions == ["fp16", "int8"] and trt.tensorrt.version.startswith("10")
    assert trt.to_dict()["tensorrt"]["version"] == trt.tensorrt.version


def test_load_by_path_and_unknown_name(tmp_path):
    src = load_target("onnxruntime-cpu").source
    assert load_target(str(src)).name == "onnxruntime-cpu"
    with pytest.raises(UserError, match=r"--target nope: no such target \(known: .*openvino-cpu"):
        load_target("nope")
    with pytest.raises(UserError, match=r"missing.toml: file not found; check the path, or pass a profile name"):
        load_target(str(tmp_path / "missing.toml"))


def test_trt_version_matches():
    assert trt_version_matches("8.5", "8.5.2.2")
    assert trt_version_matches("10", "10.3.0")
    assert not trt_version_matches("8.5", "8.6.1")
    assert not trt_version_matches("10.3", "10.30.1")  # components, not string prefixes


GOOD = """
name = "{name}"
description = "a test profile"
backend = "onnxruntime"
precisions = ["fp32", "int8"]
opset = 17
[gates.fp32]
min_cosine = 0.9999
[gates.int8]
min_cosine = 0.98
"""

BAD = [
    # (replace this, with that, expected field in the message)
    ('opset = 17', 'opset = 17\ncolor = "red"', "color: unknown field"),
    ('opset = 17', 'opset = "17"', "opset: expected int"),
    ('opset = 17', 'opset = true', "opset: expected int"),
    ('opset = 17', 'opset = 5', "opset: 5 is outside"),
    ('opset = 17\n', '', "opset: missing required field"),
    ('description = "a test profile"\n', '', "description: missing required field"),
    ('["fp32", "int8"]\nopset = 17\n[gates.fp32]', '["fp32", "fp16", "int8"]\nopset = 17\n[gates.fp16]\nmin_cosine = 0.99\n[gates.fp32]',
     "precisions: backend 'onnxruntime' cannot build 'fp16'"),
    ('["fp32", "int8"]', '["fp64"]', "precisions: 'fp64' is not one of"),
    ('[gates.int8]\nmin_cosine = 0.98', '', "gates.int8: missing"),
    ('min_cosine = 0.98', 'min_cosine = 0.98\nmin_top1_agreement = 120', "gates.int8.min_top1_agreement"),
    ('min_cosine = 0.98', 'min_cosin = 0.98', "gates.int8.min_cosin: unknown field"),
    ('backend = "onnxruntime"', 'backend = "tflite"', "backend: unknown backend 'tflite'"),
    ('opset = 17', 'opset = 17\n[tensorrt]\nversion = "10.3"', "tensorrt: only for backend 'tensorrt'"),
    ('opset = 17', 'opset = 17\n[calibration]\nmethod = "kl"', "calibration.method: 'kl' is not one of"),
    ('opset = 17', 'opset = 17\n[latency]\nbatch_sizes = [1, 8]', "latency.batch_sizes: batch sizes other than 1"),
    ('opset = 17', 'opset = 17\n[latency]\nbatch_sizes = [0]', "latency.batch_sizes"),
    ('opset = 17', 'opset = [17', "not valid TOML"),
    ('opset = 17', 'opset = 17\ndynamic_batch = true\n[latency]\nbatch_sizes = [1, 8]\ndeploy_batch = 4',
     "latency.deploy_batch: 4 is not among batch_sizes [1, 8]"),
]


@pytest.mark.parametrize("old,new,expected", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_profiles_name_file_and_field(tmp_path, old, new, expected):
    text = GOOD.format(name="mine")
    assert old in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError) as err:
        backend_for(load_target(str(path)))  # the schema on load; what its backend can do when they meet
    message = err.value.message
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_a_float_limit_may_be_written_as_a_whole_number(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD.format(name="mine").replace("[gates.int8]\nmin_cosine = 0.98", "[gates.int8]\nmin_cosine = 0.98\nmax_top1_drop = 1"))
    gate = load_target(str(path)).gate("int8")
    assert gate.max_top1_drop == 1.0 and isinstance(gate.max_top1_drop, float)


def test_good_custom_profile_and_name_mismatch(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD.format(name="mine"))
    prof = load_target(str(path))
    assert prof.calibration.method is None  # no method given: the backend's default, filled in by backend_for
    assert backend_for(prof).name == "onnxruntime"
    assert prof.name == "mine" and prof.calibration.method == "minmax" and prof.calibration.num_samples == 300
    assert prof.latency.batch_sizes == [1] and prof.dynamic_batch is False
    other = tmp_path / "other.toml"
    other.write_text(GOOD.format(name="mine"))
    with pytest.raises(UserError, match="name: 'mine' differs from the file name 'other'"):
        load_target(str(other))


TRT = """
name = "dev"
description = "a TensorRT test profile"
backend = "tensorrt"
precisions = ["fp16", "int8"]
opset = 17
[gates.fp16]
min_cosine = 0.999
[gates.int8]
min_cosine = 0.98
[tensorrt]
version = "10.3"
"""


@pytest.mark.parametrize("extra,expected", [
    ('int8_mode = "calibrate"\nversion_x = 1', "tensorrt.version_x: unknown field"),
    ('dla_core = 1\ndla_cores = 1', "tensorrt.dla_core: 1 but the device has 1"),
    ('int8_mode = "fp8"', "tensorrt.int8_mode: 'fp8' is not one of"),
])
def test_bad_tensorrt_settings(tmp_path, extra, expected):
    path = tmp_path / "dev.toml"
    path.write_text(TRT + extra + "\n")
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        load_target(str(path))


def test_tensorrt_11_refuses_calibrators_and_table_required(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text(TRT.replace('"10.3"', '"11.1"') + 'int8_mode = "calibrate"\n')
    with pytest.raises(UserError, match="TensorRT 11 removed implicit quantization"):
        load_target(str(path))
    path.write_text(TRT.split("[tensorrt]")[0])
    with pytest.raises(UserError, match=r"tensorrt: missing required table"):
        load_target(str(path))
    path.write_text(TRT)
    assert load_target(str(path)).tensorrt.int8_mode == "qdq"


def test_targets_cli_lists_every_profile(capsys):
    from edgerep.cli import main

    try:
        main(["targets"])
    except SystemExit as exc:
        assert exc.code == 0
    shown = capsys.readouterr().out
    for name in SHIPPED:
        assert name in shown
    assert "openvino-cpu*" in shown


def test_targets_table_folds_the_device_by_words_in_80_columns():
    """At 80 columns the device column wraps between words ("TRT 10.3" / "JetPack 6.1"), never inside one."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edgerep.cli", "targets"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = {w for line in lines for w in line.split()}
    for whole in ("JetPack", "6.1", "4.6.1", "DLA0", "10.3"):
        assert whole in words, whole
    assert any(w.startswith("auto=") for w in words) and "auto=av" not in words


def test_profiles_found_in_a_non_editable_install(tmp_path):
    """Build a wheel from a copy of the sources, install it into a folder and list the targets from there."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    for name in ("edgerep", "targets", "calib"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if (REPO / "README.md").exists():
        shutil.copy(REPO / "README.md", src)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, env=env, cwd=tmp_path)
    if build.returncode != 0 and "No module named" in build.stderr and "setuptools" in build.stderr:
        pytest.skip("setuptools is not installed")
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("edgerep-*.whl"))
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert inst.returncode == 0, inst.stderr[-2000:]
    code = "import edgerep.targets as t; print(t.__file__); print(' '.join(sorted(p.name for p in t.list_targets())))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr[-2000:]
    module_file, *names = run.stdout.strip().splitlines()
    assert module_file.startswith(str(site))  # the installed copy, not the checkout
    assert names and set(names[0].split()) == SHIPPED, "the wheel ships no targets/*.toml (see pyproject packages)"


def test_source_checkout_dir_is_found():
    assert REPO / "targets" in targets_dirs() or REPO / "edgerep" / "targets" in targets_dirs()


def test_deploy_batch_defaults_to_the_first_batch_size(tmp_path):
    from edgerep.pipeline.recommend import deploy_batch

    path = tmp_path / "mine.toml"
    path.write_text(GOOD.format(name="mine").replace("opset = 17", "opset = 17\ndynamic_batch = true\n[latency]\n"
                                                     "batch_sizes = [1, 8]\ndeploy_batch = 8"))
    assert load_target(str(path)).latency.deploy_batch == 8 and deploy_batch(load_target(str(path)).to_dict()) == 8
    assert deploy_batch(load_target("openvino-cpu").to_dict()) == 1  # batch_sizes [1, 8], no deploy_batch


# --- bf16: a precision of the CPU that validates it -----------------------------------------------------------


@pytest.fixture()
def on_cpu(monkeypatch):
    """Load profiles as on another CPU: host_cpu() answers a CpuInfo made from that CPU's real flags."""
    from edgerep.cpu import isa

    def use(info: isa.CpuInfo) -> None:
        monkeypatch.setattr(isa, "host_cpu", lambda: info)
    return use


def _plan(target: str, precisions: str | None, isa: str | None = None) -> list[str]:
    from edgerep.pipeline.stages import parse_precisions

    profile = load_target(target, isa=isa)
    return parse_precisions(precisions, profile, backend_for(profile))


def test_bf16_is_a_default_precision_where_the_cpu_has_it(on_cpu):
    from tests.cpu.test_isa import SAPPHIRE_RAPIDS

    on_cpu(SAPPHIRE_RAPIDS)
    assert _plan("openvino-cpu", None) == ["fp32", "bf16", "fp16", "int8"]  # what a default deployment runs there
    assert _plan("openvino-cpu", "bf16,fp32") == ["bf16", "fp32"]
    assert _plan("openvino-cpu", None, isa="amx") == ["fp32", "bf16", "fp16", "int8"]
    assert _plan("openvino-cpu", None, isa="avx2") == ["fp32", "fp16", "int8"]  # the target runs f32
    with pytest.raises(UserError) as err:
        _plan("openvino-cpu", "bf16", isa="avx512_vnni")
    assert err.value.message.startswith("--precision bf16: the target's ISA avx512_vnni does not promise BF16")


def test_bf16_without_bf16_is_one_line_naming_the_flag_and_the_features(on_cpu):
    from tests.cpu.test_isa import CASCADE_LAKE, HASWELL

    for info in (HASWELL, CASCADE_LAKE):
        on_cpu(info)
        assert _plan("openvino-cpu", None) == ["fp32", "fp16", "int8"]
        with pytest.raises(UserError) as err:
            _plan("openvino-cpu", "fp32,bf16")
        message = err.value.message
        assert message.startswith("--precision bf16: this CPU has no BF16 (looked for avx512_bf16 or amx_bf16")
        assert "build fp32" in message and "\n" not in message


def test_other_backends_refuse_bf16_with_what_they_build(on_cpu):
    from tests.cpu.test_isa import HASWELL, SAPPHIRE_RAPIDS

    for info in (HASWELL, SAPPHIRE_RAPIDS):
        on_cpu(info)
        for target, builds in (("onnxruntime-cpu", "fp32, int8"), ("openvino-avx2", "fp32, fp16, int8")):
            with pytest.raises(UserError) as err:
                _plan(target, "bf16")
            assert err.value.message == (f"--precision bf16: target {target} ({load_target(target).backend}) builds "
                                         f"{builds}; pick from those or another --target")


def test_a_profile_listing_only_bf16_says_why_nothing_builds(tmp_path, on_cpu):
    from tests.cpu.test_isa import HASWELL

    on_cpu(HASWELL)
    text = (REPO / "targets" / "openvino-cpu.toml").read_text().replace('name = "openvino-cpu"', 'name = "mine"')
    text = text.replace('precisions = ["fp32", "bf16", "fp16", "int8"]', 'precisions = ["bf16"]')
    text = "\n".join(line for line in text.split("\n\n") if "[gates" not in line or ".bf16]" in line)
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        _plan(str(path), None)
    assert err.value.message.startswith("--target mine: lists only bf16, and bf16: this CPU has no BF16")


def test_precisions_are_ranked_high_to_low_in_one_order():
    from edgerep.pipeline.recommend import PRECISION_ORDER
    from edgerep.targets import PRECISIONS

    assert PRECISIONS == PRECISION_ORDER == ("fp32", "bf16", "fp16", "int8")
