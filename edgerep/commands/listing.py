"""`edgerep models` and `edgerep targets`: what the zoo and the shipped target profiles hold."""
from __future__ import annotations

from rich.console import Console


def run_models(*, out: Console) -> int:
    """One line per zoo model: its spec, input shape and description."""
    from edgerep import zoo

    for name in zoo.model_names():
        entry = zoo.get_entry(name)
        out.print(f"zoo:{name}\t{'x'.join(map(str, entry.input_shape))}\t{entry.description}")
    return 0


def run_targets(*, out: Console) -> int:
    """The profiles as a table (the default starred); descriptions only on a terminal wide enough for them."""
    from rich import box
    from rich.table import Table

    from edgerep.cpu.isa import host_cpu
    from edgerep.targets import DEFAULT_TARGET, list_targets

    table = Table(title="edgerep targets (* default)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    wide = out.width >= 140
    here = host_cpu().isa or "x86-64"
    profiles = list_targets()
    for column in ("name", "backend", "precisions", "opset", "batch"):
        # precisions wrap between words ("fp32 bf16" / "fp16 int8"): the device column needs the room
        table.add_column(column, no_wrap=column != "precisions", max_width=10 if column == "precisions" else None,
                         min_width=max(len(p.name) for p in profiles) if column == "name" else None)
    # the device folds by words ("TRT 10.3 / JetPack 6.1 / DLA0"), never inside one, in an 80-column terminal; its
    # longest word is the CPU's ISA ("auto=avx512vnni")
    isa_word = len(f"auto={here}")
    table.add_column("device", overflow="fold", min_width=max(12, isa_word))
    if wide:
        table.add_column("description", overflow="fold", ratio=1)
    for prof in profiles:
        trt = prof.tensorrt
        isa = f"auto={here}" if prof.isa == "auto" else prof.isa
        device = f"CPU {isa}" if trt is None else (f"TRT {trt.version}" + (f" JetPack {trt.jetpack}" if trt.jetpack else "")
                                                   + (f" DLA{trt.dla_core}" if trt.dla_core is not None else ""))
        name = prof.name + ("*" if prof.name == DEFAULT_TARGET else "")
        cells = [name, prof.backend, " ".join(prof.precisions), str(prof.opset),
                 "dynamic" if prof.dynamic_batch else "static", device]
        table.add_row(*cells, *([prof.description] if wide else []))
    out.print(table)
    return 0
