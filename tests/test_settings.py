"""Settings: validated before any work, with messages that name the setting."""

import pytest
import yaml

from vsearch_pipeline.settings import Settings, SettingsError, load_settings, save_settings


def test_defaults_are_the_documented_ones():
    settings = Settings()
    assert settings.model.name == "efficientnet-lite0"
    assert settings.index.index_type == "hnsw"
    assert settings.subset.fraction == 1.0
    assert settings.near_duplicates.hamming_threshold == 8
    assert settings.evaluation.ks == [1, 5, 10]


def test_overrides_merge_section_by_section(tmp_path):
    (tmp_path / "vsearch.yaml").write_text(yaml.safe_dump(
        {"subset": {"fraction": 0.5, "seed": 7}, "index": {"index_type": "flat"}}))
    settings = load_settings(tmp_path, {"subset": {"seed": 9}})
    assert settings.subset.fraction == 0.5 and settings.subset.seed == 9
    assert settings.index.index_type == "flat"


def test_save_and_load_round_trip(tmp_path):
    settings = load_settings(tmp_path, {"source": {"uri": "s3://b/p",
                                                   "endpoint_url": "http://127.0.0.1:9"}})
    save_settings(tmp_path, settings)
    assert load_settings(tmp_path) == settings


@pytest.mark.parametrize(("override", "named"), [
    ({"subset": {"fraction": 0}}, "fraction"),
    ({"subset": {"fraction": 1.5}}, "fraction"),
    ({"near_duplicates": {"hamming_threshold": 40}}, "hamming_threshold"),
    ({"model": {"batch_size": 0}}, "batch_size"),
    ({"subst": {"fraction": 0.5}}, "subst"),
    ({"index": {"nprobe": 0}}, "nprobe"),
    ({"evaluation": {"ks": [0]}}, "ks"),
])
def test_bad_values_are_refused_with_the_setting_named(tmp_path, override, named):
    with pytest.raises(ValueError, match=named):
        load_settings(tmp_path, override)


@pytest.mark.parametrize(("override", "message"), [
    ({"model": {"name": "resnet9000"}}, "model.name"),
    ({"model": {"name": "open_clip:ViT-B-32"}}, "model.pretrained is required"),
    ({"model": {"device": "tpu"}}, "model.device"),
    ({"model": {"precision": "fp16"}}, "model.precision"),
    ({"index": {"index_type": "annoy"}}, "index.index_type must be one of"),
    ({"clusters": {"method": "dbscan"}}, "clusters.method must be one of"),
    ({"clusters": {"reduce": "tsne"}}, "clusters.reduce must be one of"),
])
def test_loading_refuses_unknown_choices(tmp_path, override, message):
    """Every check runs when the settings are read (the Definitions that `dagster dev` loads
    included), not in a second step a caller could skip."""
    with pytest.raises(SettingsError, match=message):
        load_settings(tmp_path, override)


def test_a_settings_file_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "vsearch.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping of sections"):
        load_settings(tmp_path)
