"""Data yaml defects of issue 15: each one is a one-line DataError naming the yaml (and the key)."""
from __future__ import annotations

import pytest

from yoloforge.data.formats import DataError, load_data_yaml

CASES = {
    "path: 5\ntrain: images\nnames: [a]\n": "'path' must be a folder name",
    "path: [a]\ntrain: images\nnames: [a]\n": "'path' must be a folder name",
    "train: images\nval: images\nnc: [4]\n": "'nc' must be a positive integer",
    "train: images\nval: images\nnc: four\n": "'nc' must be a positive integer",
    "train: images\nval: images\nnc: 4.7\n": "'nc' must be a positive integer",
    "train: images\nval: images\nnc: true\n": "'nc' must be a positive integer",
    "train: images\nval: images\nnc: 0\n": "'nc' must be a positive integer",
    "train: images\nval: images\nnc: 1000000000\n": "without names",
    "train: images\nval: images\nnames: []\n": "'names' is empty",
    "train: [[images]]\nval: images\nnames: [a]\n": "'train' must be a path or a list of paths",
    "train: {a: 1}\nval: images\nnames: [a]\n": "'train' must be a path or a list of paths",
    "train: images\nval: images\nnames: [a, b]\nnc: 3\n": "nc=3 but 2 names",
    "train: images\nval: images\nnames: [a\n": "not valid YAML",
    "train: \"ima\\0ges\"\nval: images\nnames: [a]\n": "contains a NUL",
    "train: missing_dir\nval: images\nnames: [a]\n": "train source 'missing_dir' not found",
    "- a\n- b\n": "expected a mapping",
}


@pytest.mark.parametrize("text", list(CASES))
def test_bad_yaml_is_one_line_naming_it(tmp_path, text):
    (tmp_path / "images").mkdir()
    y = tmp_path / "data.yaml"
    y.write_text(text)
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    msg = str(e.value)
    assert str(y) in msg and CASES[text] in msg and "\n" not in msg


@pytest.mark.parametrize("raw, words", [("train: images\n".encode("utf-16"), "NUL bytes"),
                                        (b"train: images\nnames: [\xff\xfe]\n", "not UTF-8"),
                                        (bytes(range(256)), "NUL bytes")])
def test_binary_or_utf16_yaml(tmp_path, raw, words):
    y = tmp_path / "data.yaml"
    y.write_bytes(raw)
    with pytest.raises(DataError, match=words) as e:
        load_data_yaml(y)
    assert str(y) in str(e.value)


def test_yaml_error_names_the_line(tmp_path):
    (tmp_path / "images").mkdir()
    y = tmp_path / "data.yaml"
    y.write_text("train: images\nval: images\nnames: [a, b\n\n")
    with pytest.raises(DataError, match=r"data.yaml:\d+: not valid YAML"):
        load_data_yaml(y)
