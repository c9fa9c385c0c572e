"""The hyper-parameter presets equal the official files value for value (numbers are facts; each table
cites its file). A preset is what ``load_hyp(model.default_hyp, model.name)`` returns for that model."""
import pytest

from yoloforge.config import load_hyp

# WongKinYiu/yolov7 data/hyp.scratch.{p5,tiny,p6}.yaml (commit a207844), lines 1-31
YOLOV7 = {
    ("p5", "yolov7"): dict(lr0=0.01, lrf=0.1, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
                           warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7,
                           obj_pw=1.0, iou_t=0.2, anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4,
                           degrees=0.0, translate=0.2, scale=0.9, shear=0.0, perspective=0.0, flipud=0.0,
                           fliplr=0.5, mosaic=1.0, mixup=0.15, paste_in=0.15, loss_ota=1),
    ("tiny", "yolov7-tiny"): dict(lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
                                  warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0,
                                  obj_pw=1.0, iou_t=0.2, anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7,
                                  hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
                                  flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.05, paste_in=0.05, loss_ota=1),
    ("p6", "yolov7-w6"): dict(lr0=0.01, lrf=0.2, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
                              warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7,
                              obj_pw=1.0, iou_t=0.2, anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4,
                              degrees=0.0, translate=0.2, scale=0.9, shear=0.0, perspective=0.0, flipud=0.0,
                              fliplr=0.5, mosaic=1.0, mixup=0.15, paste_in=0.15, loss_ota=1),
}
# code constants of yolov7: utils/datasets.py mixup np.random.beta(8.0, 8.0), random_perspective scale gain
# uniform(1 - scale, 1.1 + scale); utils/loss.py ComputeLossAuxOTA 0.25 aux weight; train.py no shuffle
# (InfiniteDataLoader without sampler), model.half().float(), no gradient clipping, no mosaic-off epochs;
# utils/datasets.py __getitem__ lines 541-544: load_mosaic if random.random() < 0.8 else load_mosaic9
YOLOV7_CODE = dict(mixup_beta=8.0, scale_bias=0.1, aux_weight=0.25, shuffle=False, init_fp16_round=True,
                   grad_clip=0.0, close_mosaic=0, warmup_min_iters=1000, step_rule="modulo", mosaic9=0.2,
                   mosaic_shuffle=False)

# meituan/YOLOv6@0.2.0 configs/yolov6{n,t,s,m,l,l_relu}.py solver and data_aug dicts; yolov6/models/loss.py
# ComputeLoss defaults (warmup_epoch 4, loss weights 1.0 / 2.5 / 0.5, ATSS 9, TAL 13 / 1.0 / 6.0);
# tools/train.py --stop_aug_last_n_epoch 15; yolov6/data/data_augment.py mixup beta(32, 32); yolov6/data/datasets.py
# get_mosaic random.shuffle(indices) (the sample's image on any of the 4 tiles); engine.py
# steps when curr_step - last_opt_step >= accumulate, warm-up max(round(3 * nb), 1000)
YOLOV6_COMMON = dict(lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0, warmup_momentum=0.8,
                     warmup_bias_lr=0.1, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1,
                     shear=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, loss_cls=1.0, loss_iou=2.5, loss_dfl=0.5,
                     atss_warmup_epochs=4, atss_topk=9, tal_topk=13, tal_alpha=1.0, tal_beta=6.0, mixup_beta=32.0,
                     close_mosaic=15, step_rule="since_last", warmup_min_iters=1000, grad_clip=0.0, shuffle=True,
                     score_sum="raw", cos_lr=True, nesterov=True, mosaic9=0.0, mosaic_shuffle=True)
YOLOV6 = {
    "yolov6n": dict(lr0=0.02, scale=0.5, mixup=0.0),
    "yolov6t": dict(lr0=0.01, scale=0.5, mixup=0.0),
    "yolov6s": dict(lr0=0.01, scale=0.5, mixup=0.0),
    "yolov6m": dict(lr0=0.01, scale=0.9, mixup=0.1),
    "yolov6l": dict(lr0=0.01, scale=0.9, mixup=0.1),
    "yolov6l-relu": dict(lr0=0.01, scale=0.9, mixup=0.1),
}

# WongKinYiu/ScaledYOLOv4@yolov4-csp data/hyp.scratch.yaml lines 1-28; utils/loss.py: wh-ratio anchor rule,
# CIoU, smooth_BCE(eps=0.0); train.py: warm-up max(round(3 * nb), 1000), no shuffle; datasets.py mixup beta 8
SY4_CSP = dict(lr0=0.01, lrf=0.2, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0, warmup_momentum=0.8,
               warmup_bias_lr=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.2, anchor_t=4.0,
               hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.9, shear=0.0,
               perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0, anchor_match="ratio",
               iou_loss="ciou", label_smoothing=0.0, neighbor_rule="fraction", shuffle=False, mixup_beta=8.0,
               warmup_min_iters=1000, grad_clip=0.0, close_mosaic=0, mosaic9=0.0, mosaic_shuffle=False)
# ScaledYOLOv4@yolov4-large data/hyp.scratch.yaml lines 6-27 ('giou' is its box gain); train.py: cosine to a
# 0.2 floor (lrf 0.2), warm-up max(3 * nb, 1e3) with momentum from 0.9 and bias lr 0.1;
# utils/general.py build_targets: the inverse-fraction neighbour rule
SY4_LARGE = dict(SY4_CSP, box=0.05, cls=0.5, obj=1.0, translate=0.5, scale=0.5, lrf=0.2, warmup_momentum=0.9,
                 neighbor_rule="inverse")


def _check(hyp: dict, expected: dict) -> None:
    wrong = {k: (hyp.get(k, "MISSING"), v) for k, v in expected.items() if hyp.get(k, "MISSING") != v}
    assert not wrong, f"preset differs from the official file (ours, official): {wrong}"


@pytest.mark.parametrize("preset,model", list(YOLOV7))
def test_yolov7_presets(preset, model):
    _check(load_hyp(preset, model), {**YOLOV7[(preset, model)], **YOLOV7_CODE})


@pytest.mark.parametrize("model", list(YOLOV6))
def test_yolov6_presets(model):
    _check(load_hyp("yolov6", model), {**YOLOV6_COMMON, **YOLOV6[model]})


def test_scaledyolov4_presets():
    _check(load_hyp("yolov4", "yolov4-csp"), SY4_CSP)
    for m in ("yolov4-p5", "yolov4-p6", "yolov4-p7"):
        _check(load_hyp("yolov4", m), SY4_LARGE)


def test_models_pick_the_preset_named_after_their_file():
    from yoloforge.families.registry import build_model

    for name, preset in (("yolov7-tiny", "tiny"), ("yolov7", "p5"), ("yolov7-w6", "p6"), ("yolov6n", "yolov6"),
                         ("yolov4-csp", "yolov4"), ("yolov4-p5", "yolov4")):
        assert build_model(name, nc=2).default_hyp == preset, name


def test_small_data_recipe_is_a_named_overlay():
    official = load_hyp("yolov6", "yolov6n")
    small = load_hyp("yolov6", "yolov6n", source="small-data")
    changed = {k for k in official if official[k] != small[k]}
    assert changed == {"warmup_min_iters", "warmup_max_fraction", "grad_clip", "score_sum", "sched_lag",
                       "warmup_accumulate", "step_rule"}, changed  # YOLOv6 already closes mosaic for 15 epochs
    v7 = load_hyp("tiny", "yolov7-tiny", source="small-data")
    assert v7["close_mosaic"] == 15 and v7["shuffle"] and not load_hyp("tiny", "yolov7-tiny")["shuffle"]
    assert small["lr0"] == official["lr0"] and small["mosaic"] == official["mosaic"]
