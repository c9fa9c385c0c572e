"""YOLOv6 (meituan/YOLOv6 release 2.0, N/T/S/M/L): model, loss (ATSS / TAL, VFL, SIoU / GIoU, DFL), the
RepOptimizer (repopt), self-distillation (distill), the official-checkpoint converter (convert), presets (hyp)."""
from yoloforge.families.base import Family
from yoloforge.families.yolov6.hyp import PRESETS, VARIANT_HYP

FAMILY = Family(
    "yolov6", __name__, PRESETS, VARIANT_HYP,
    # meituan/YOLOv6@0.2.0 get_block: RepVGG, the RepOptimizer's two stages, plain conv blocks (blocks.conv_block)
    training_modes=("repvgg", "hyper_search", "repopt", "conv_silu", "conv_relu"),
    distill_loss=True,
    qat_hyp={"atss_warmup_epochs": 0},  # engine.py under --quant: no warm-up, ATSS's included
)
