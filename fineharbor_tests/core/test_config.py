from pathlib import Path

import pytest

from fineharbor.core.config import (
    ConfigError,
    fineharbor_home,
    fineharbor_state,
    load_config,
    source_fingerprint,
)

VALID = """
name: t
sources:
  - name: charts
    reader: hf_parquet
    location: data/charts
    mapping: {preset: cauldron}
  - name: urls
    reader: url_list
    location: ${DATA_DIR:-lists}/urls.parquet
    mapping: {preset: laion}
    role: train
    priority: 3
stages:
  ingest:
    download: {concurrency: 8}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fineharbor.yaml"
    path.write_text(text)
    return path


def test_valid_file_resolves_paths_against_its_directory(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.source_names == ["charts", "urls"]
    assert config.source("charts").location == str(tmp_path / "data" / "charts")
    assert config.source("urls").location == str(tmp_path / "lists" / "urls.parquet")
    assert config.stages.ingest.download.concurrency == 8
    assert config.stages.ingest.download.timeout_s == 10.0  # default kept


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/srv/lists")
    config = load_config(write(tmp_path, VALID))
    assert config.source("urls").location == "/srv/lists/urls.parquet"


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (VALID.replace("reader: hf_parquet", "reader: csv_magic"), "sources.0", "reader"),
        (
            VALID.replace("concurrency: 8", "concurrency: 0"),
            "stages.ingest.download.concurrency",
            "greater than or equal to 1",
        ),
        (
            VALID.replace("name: charts", "name: Charts/x"),
            "sources.0.hf_parquet.name",
            "not a valid source name",
        ),
        (
            VALID.replace("role: train", "role: eval"),
            "sources.1.url_list.role",
            "'train' or 'benchmark'",
        ),
        (
            VALID.replace("priority: 3", "priority: 3\n    colour: red"),
            "sources.1.url_list.colour",
            "Extra inputs",
        ),
        (VALID.replace("name: urls", "name: charts"), "sources", "used twice"),
        (
            VALID.replace("{preset: laion}", "{user_prompt: hi}"),
            "sources.1.url_list.mapping",
            "text rule",
        ),
    ],
)
def test_bad_file_names_file_field_and_problem(tmp_path, text, field, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert problem in message


def test_yaml_syntax_error_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "sources: [\n"))
    with pytest.raises(ConfigError, match="no such project file"):
        load_config(tmp_path / "absent.yaml")


def test_unset_environment_variable_is_named(tmp_path):
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        load_config(write(tmp_path, VALID.replace("data/charts", "${NOPE_NOT_SET}/charts")))


def test_fingerprint_changes_with_source_config(tmp_path):
    config = load_config(write(tmp_path, VALID))
    changed = load_config(write(tmp_path, VALID.replace("priority: 3", "priority: 4")))
    assert source_fingerprint(config.source("charts")) == source_fingerprint(
        changed.source("charts")
    )
    assert source_fingerprint(config.source("urls")) != source_fingerprint(changed.source("urls"))


def test_home_may_be_object_storage_and_state_stays_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FINEHARBOR_STATE", raising=False)
    monkeypatch.setenv("FINEHARBOR_HOME", "data")
    assert fineharbor_home() == str(tmp_path / "data")
    assert fineharbor_state() == tmp_path / "data"  # a local home is its own state directory
    monkeypatch.setenv("FINEHARBOR_HOME", "s3://bucket/prefix")
    assert fineharbor_home() == "s3://bucket/prefix"
    assert fineharbor_state() == tmp_path / ".fineharbor"  # the documented local default
    monkeypatch.setenv("FINEHARBOR_STATE", str(tmp_path / "state"))
    assert fineharbor_state() == tmp_path / "state"
    config = load_config(
        write(
            tmp_path,
            VALID.replace("location: data/charts", "location: ${FINEHARBOR_STATE}/demo/charts"),
        )
    )
    assert config.source("charts").location == str(tmp_path / "state" / "demo" / "charts")
    monkeypatch.delenv("FINEHARBOR_STATE")
    config = load_config(write(tmp_path, VALID.replace("data/charts", "${FINEHARBOR_STATE}/c")))
    assert config.source("charts").location == str(tmp_path / ".fineharbor" / "c")


def test_variables_expand_inside_values_only(tmp_path, monkeypatch):
    """A value cannot change the file's structure: '#' and newlines stay in their string, and
    variables in comments or keys are never looked at."""
    monkeypatch.setenv("DATA_DIR", "/srv/a#b\nrole: benchmark")
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    text = "# ${NOPE_NOT_SET} in a comment is fine\n" + VALID.replace(
        "    priority: 3", "    priority: 3  # ${NOPE_NOT_SET}"
    )
    config = load_config(write(tmp_path, text))
    urls = config.source("urls")
    assert urls.location == "/srv/a#b\nrole: benchmark/urls.parquet"
    assert urls.role == "train"  # the newline injected no key
    lower = VALID + "release: {clip_score_min: '${CLIP_LOWER:-0.25}'}\n"
    assert load_config(write(tmp_path, lower)).release.clip_score_min == 0.25


def test_unset_variable_names_its_field(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, VALID.replace("data/charts", "${NOPE_NOT_SET}/charts")))
    message = str(caught.value)
    assert "sources.0.location" in message and "NOPE_NOT_SET" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("name", ["abc\n", "abc\n\n", "\nabc", "abc\r"])
def test_source_name_with_a_trailing_newline_is_refused(tmp_path, name):
    text = VALID.replace("name: charts", f"name: {name!r}".replace("'", '"'))
    with pytest.raises(ConfigError, match="not a valid source name"):
        load_config(write(tmp_path, text))


def test_project_file_that_is_not_utf8_gives_one_line(tmp_path):
    path = tmp_path / "fineharbor.yaml"
    path.write_bytes(VALID.replace("name: t", "name: caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "not UTF-8" in message
    assert len(message.splitlines()) == 1


def test_web_caption_sources_get_the_web_pair_rules(tmp_path):
    shards = (
        "  - name: shards\n    reader: webdataset\n    location: data/wds\n"
        "    mapping: {preset: webdataset_caption}\n"
    )
    config = load_config(write(tmp_path, VALID.replace("stages:", shards + "stages:")))
    params = config.clean_params()
    assert params.web_pair_sources == ["urls", "shards"]  # not the Parquet charts
    assert params.web_pair_rules_apply("urls") and not params.web_pair_rules_apply("charts")
    assert config.stages.clean.web_pair_sources == []  # the user's value is left as written
    listed = VALID + "  clean: {web_pair_sources: [charts]}\n"
    listed = load_config(write(tmp_path, listed)).clean_params()
    assert listed.web_pair_sources == ["charts", "urls"]


def test_a_byte_order_mark_is_not_part_of_the_file(tmp_path):
    path = tmp_path / "fineharbor.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_config(path).source_names == ["charts", "urls"]
