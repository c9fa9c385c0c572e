"""Every option of every verb says what it does and what its default is (issue 14, part 6)."""
from __future__ import annotations

import argparse

from yoloforge.cli import build_parser


def _verbs(parser=None, prefix=""):
    """Every (sub-)command parser by its full name ("train", "data check", ...)."""
    parser = parser or build_parser()
    out = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, p in a.choices.items():
                out[prefix + name] = p
                out.update(_verbs(p, prefix + name + " "))
    return out


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for verb, p in _verbs().items():
        text = "".join(p.format_help().split())  # wrapping may break at spaces or hyphens
        for a in p._actions:
            if not a.option_strings or a.dest == "help":
                continue
            if not a.help:
                missing.append(f"{verb} {a.option_strings[0]}: no help")
                continue
            h = " ".join(p._get_formatter()._expand_help(a).split())
            if "default" not in h:
                missing.append(f"{verb} {a.option_strings[0]}: no default in {h!r}")
            elif "".join(h.split()) not in text:
                missing.append(f"{verb} {a.option_strings[0]}: not in the printed help")
    assert not missing, "\n".join(missing)


def test_train_help_shows_values():
    text = " ".join(_verbs()["train"].format_help().split())
    for frag in ("--imgsz IMGSZ training and validation image size", "(default: 640)", "(default: 16)",
                 "(default: runs/train)", "--deterministic, --no-deterministic deterministic kernels"):
        assert frag in text, frag
    assert "(default: off)" in text and "(default: on)" in text
