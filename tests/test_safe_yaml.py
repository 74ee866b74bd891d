"""YAML configs are read without trusting them: alias bombs, duplicate keys, empty files, directories,
binary and oversized files each give one ConfigError that says what is wrong."""

from __future__ import annotations

import time

import pytest

from greengossip.envs.config import ConfigError, load_config
from greengossip.envs.safe_yaml import MAX_BYTES, MAX_DEPTH, YAMLInputError, load_yaml_text

BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    + ["unknown_key: *i"]
)


def test_alias_bomb_under_an_unknown_key_fails_fast_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than") as caught:
        load_config(path)
    assert time.perf_counter() - started < 30  # minutes before the limit; generous for a loaded machine
    assert len(str(caught.value)) < 1_000


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("n_nodes: &n 8\nmax_rounds: *n\n")
    config = load_config(path)
    assert config.n_nodes == 8 and config.max_rounds == 8


def test_recursive_alias_is_refused():
    with pytest.raises(YAMLInputError, match="nesting deeper"):
        load_yaml_text("a: &a [*a]\n", "test")


def test_duplicate_key_is_an_error_naming_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("n_nodes: 8\nmax_rounds: 10\nn_nodes: 16\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'n_nodes' \(first at line 1\)"):
        load_config(path)


def test_duplicate_key_in_a_nested_section_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("learning:\n  batch_size: 8\n  batch_size: 16\n")
    with pytest.raises(ConfigError, match="duplicate key 'batch_size'"):
        load_config(path)


def test_merge_key_may_override_a_merged_value():
    assert load_yaml_text("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  x: 3\n", "t")["mine"] == {"x": 3, "y": 2}


def test_directory_is_reported_as_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_binary_file_is_reported_as_not_text(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\x80\x81\xff\x00PK\x03\x04")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_BYTES)
    with pytest.raises(ConfigError, match="small YAML file"):
        load_config(path)


def test_deep_nesting_is_refused():
    with pytest.raises(YAMLInputError, match="deep"):
        load_yaml_text("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), "t")
    with pytest.raises(YAMLInputError, match="deep"):
        load_yaml_text("[" * 5_000 + "]" * 5_000, "t")


@pytest.mark.parametrize("text", [
    "n_nodes: !!python/object/apply:os.system ['true']\n",
    "n_nodes: 8\n---\nn_nodes: 16\n",
    "\x1fn_nodes: 8\n",
], ids=["python-tag", "several-documents", "control-character"])
def test_yaml_beyond_one_plain_document_is_refused(tmp_path, text):
    path = tmp_path / "refused.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
