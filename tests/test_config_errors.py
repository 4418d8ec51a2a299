"""Bad configuration fails before any work starts: `vsearch materialize --config FILE` (in a
subprocess, or through click's runner for the settings alone), for every kind of mistake (an
unknown model, index type, clustering method, reduction, engine or executor; a fraction outside
(0, 1]; out-of-range numbers; a typo in a key or a section; a file that is not a mapping or not
YAML; a missing folder or bucket; a force_include entry that names no file; NaN, infinities,
integers past their width and booleans where a number goes; a section or key written twice; bytes
that are not UTF-8). Each exits non-zero (2 for a bad setting, as for a bad argument; 1 for a
source that does not hold what the settings name) with one line per problem that names the
setting (or the file and line) and what it may be, prints no traceback, and leaves the home as it
was: no settings saved, no Dagster instance, no artifacts.

The other files people edit by hand are read the same way (vsearch_pipeline/core/text_files.py):
a BOM is accepted, and a line that is not UTF-8 is named by file and line, in a grounding set
(the step fails saying so) and in a URL list for `vsearch download` (the line is skipped and the
rest are fetched). The keys file has its own module, tests/test_keys_file.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import traceback
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from vsearch_pipeline.cli import main
from vsearch_pipeline.core.artifacts import load_grounding_sets
from vsearch_pipeline.settings import SettingsError, load_settings, read_settings_file

VSEARCH = str(Path(sys.executable).parent / "vsearch")


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (32, 24), bytes(range(256)) * 9).save(out, "JPEG")
    return out.getvalue()


CAT = _jpeg()
CHECKED: list[tuple[str, str]] = []  # (case, message): printed at the end of the module

BAD_SETTINGS = {
    "unknown model": ({"model": {"name": "resnet9000"}},
                      ["model.name", "'efficientnet-lite0'", "open_clip:"]),
    "unknown index type": ({"index": {"index_type": "annoy"}},
                           ["index.index_type", "'flat', 'hnsw', 'ivf-flat', 'ivf-pq'", "'annoy'"]),
    "unknown clustering method": ({"clusters": {"method": "dbscan"}},
                                  ["clusters.method", "'hdbscan', 'kmeans'"]),
    "unknown reduction": ({"clusters": {"reduce": "tsne"}},
                          ["clusters.reduce", "'none', 'pca', 'umap'"]),
    "unknown engine": ({"model": {"engine": "tensorrt"}},
                       ["model.engine", "'auto', 'torch', 'onnx', 'openvino'"]),
    "unknown executor": ({"execution": {"executor": "spark"}},
                         ["execution.executor", "in_process, multiprocess, dask"]),
    "unknown device": ({"model": {"device": "tpu"}}, ["model.device", "cpu"]),
    "unknown hnsw storage": ({"index": {"storage": "PQ4"}}, ["index.storage", "SQ8"]),
    "fraction 0": ({"subset": {"fraction": 0}}, ["subset.fraction", "(0.0, 1.0]", "got 0"]),
    "fraction -0.5": ({"subset": {"fraction": -0.5}}, ["subset.fraction", "(0.0, 1.0]", "-0.5"]),
    "fraction 1.5": ({"subset": {"fraction": 1.5}}, ["subset.fraction", "(0.0, 1.0]", "1.5"]),
    "hamming_threshold 99": ({"near_duplicates": {"hamming_threshold": 99}},
                             ["near_duplicates.hamming_threshold", "0..32", "99"]),
    "batch_size 0": ({"model": {"batch_size": 0}}, ["model.batch_size", "1..4096"]),
    "nprobe 0": ({"index": {"nprobe": 0}}, ["index.nprobe", "in 1..2147483647", "got 0"]),
    "min_cluster_size 1": ({"clusters": {"min_cluster_size": 1}},
                           ["clusters.min_cluster_size", "at least 2"]),
    "read_workers 1000": ({"manifest": {"read_workers": 1000}}, ["manifest.read_workers", "1..64"]),
    "min_recall 2": ({"index": {"min_recall": 2}}, ["index.min_recall", "[0.0, 1.0]"]),
    "ks [0]": ({"evaluation": {"ks": [0]}}, ["evaluation.ks", "positive integers"]),
    "a number as text": ({"model": {"batch_size": "lots"}}, ["model.batch_size", "integer", "lots"]),
    "typo in a key": ({"subset": {"fracton": 0.5}},
                      ["subset.fracton", "unknown setting", "did you mean 'fraction'",
                       "fraction, seed, force_include"]),
    "typo in a section": ({"subst": {"fraction": 0.5}},
                          ["subst", "unknown setting", "did you mean 'subset'"]),
    "a section that is not a mapping": ({"subset": 0.5},
                                        ["subset must be a mapping", "fraction, seed"]),
    "fast_scan without ivf-pq": ({"index": {"fast_scan": True}}, ["index.fast_scan", "ivf-pq"]),
}
BAD_NUMBERS = {  # YAML text, as a person writes it: what safe_dump would never produce
    "fraction .nan": ("subset:\n  fraction: .nan\n",
                      ["subset.fraction", "a finite number", "got nan"]),
    "k_factor .inf": ("index:\n  k_factor: .inf\n", ["index.k_factor", "a finite number", "inf"]),
    "refresh -.inf": ("serving:\n  refresh_interval_s: -.inf\n",
                      ["serving.refresh_interval_s", "a finite number", "-inf"]),
    "rate limit 1e400": ("serving:\n  rate_limit_per_s: 1e400\n",
                         ["serving.rate_limit_per_s", "a finite number", "'1e400'"]),
    "expansion_alpha 1.0e+400": ("retrieval:\n  expansion_alpha: 1.0e+400\n",
                                 ["retrieval.expansion_alpha", "a finite number", "inf"]),
    "max_upload_bytes past 64 bits": ("serving:\n  max_upload_bytes: 100000000000000000000000\n",
                                      ["serving.max_upload_bytes", "at most 9223372036854775807",
                                       "got 100000000000000000000000"]),
    "float past 64 bits for an integer": ("serving:\n  max_upload_pixels: 1.0e+30\n",
                                          ["serving.max_upload_pixels",
                                           "at most 9223372036854775807", "1e+30"]),
    "efSearch past FAISS's int": ("index:\n  efSearch: 3000000000\n",
                                  ["index.efSearch", "in 1..2147483647", "3000000000"]),
    "clusters.seed past a random_state": ("clusters:\n  seed: -1\n",
                                          ["clusters.seed", "in 0..4294967295", "-1"]),
    "batch_size yes": ("model:\n  batch_size: yes\n",
                       ["model.batch_size must be a number", "got True", "yes, no, on and off"]),
    "fraction yes (equal to its default)": ("subset:\n  fraction: yes\n",
                                            ["subset.fraction must be a number", "got True"]),
    "seed no (equal to its default)": ("subset:\n  seed: no\n",
                                       ["subset.seed must be a number", "got False"]),
    "ks with an on": ("evaluation:\n  ks: [1, on]\n",
                      ["evaluation.ks must be a number", "got [1, True]"]),
}
NOT_SETTINGS = {
    "a list, not a mapping": ("- index\n- hnsw\n", ["must be a mapping of sections", "not a list"]),
    "not YAML": ("index: [hnsw\nsubset: {fraction: 0.5\n", ["not valid YAML", "line "]),
    "a plain string": ("just some words\n", ["must be a mapping of sections", "not a str"]),
    "a section given twice": ("index:\n  index_type: flat\nsubset:\n  fraction: 0.5\nindex:\n"
                              "  nprobe: 4\n", ["bad.yaml", "(line 5, column 1)",
                                                 "'index' is given twice (first on line 1)"]),
    "a key given twice": ("index:\n  nprobe: 4\n  nprobe: 8\n",
                          ["bad.yaml", "(line 3, column 3)", "'nprobe' is given twice (first on "
                                                             "line 2)"]),
    "a line that is not UTF-8": (b"index:\n  index_type: flat\n  storage: caf\xe9\n",
                                 ["bad.yaml, line 3: not UTF-8 text", "byte 0xe9",
                                  "save the file as UTF-8"]),
    "UTF-16 text": ("index:\n  index_type: flat\n".encode("utf-16"),
                    ["bad.yaml, line 1: UTF-16 text, not UTF-8"]),
}


def _materialize(home: Path, config: Path, source: str, env: dict | None = None
                 ) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "VSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([VSEARCH, "materialize", "--source", source, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=config.parent)


def _materialize_in_process(home: Path, config: Path, source: str) -> subprocess.CompletedProcess:
    """The same command through click's test runner: the settings cases need no fresh process
    (and starting one per case cost most of this module's time)."""
    result = CliRunner().invoke(main, ["materialize", "--home", str(home), "--source", source,
                                       "--config", str(config)])
    stderr = result.stderr + ("".join(traceback.format_exception(result.exception))
                              if result.exception and not isinstance(result.exception, SystemExit)
                              else "")
    return subprocess.CompletedProcess([], result.exit_code, result.stdout, stderr)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for photo in sorted((shared_data / "caltech101" / "Leopards").glob("*.jpg"))[:3]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


def _assert_refused_before_work(result: subprocess.CompletedProcess, home: Path,
                                expected: list[str], case: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.split("Error: ", 1)[1]
    for text in expected:
        assert text in error, (text, error)
    assert not (home / "dagster").exists() and not (home / "artifacts").exists()
    assert not (home / "vsearch.duckdb").exists()
    CHECKED.append((case, error.strip()))


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_fails_before_any_work_naming_it(case, photos, tmp_path):
    settings, expected = BAD_SETTINGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(settings))
    home = tmp_path / "home"
    result = _materialize_in_process(home, config, str(photos))
    _assert_refused_before_work(result, home, expected, case)
    assert not home.exists()
    assert len(result.stderr.split("Error: ", 1)[1].strip().splitlines()) == 1


@pytest.mark.parametrize("case", BAD_NUMBERS)
def test_a_number_that_would_not_survive_the_run_is_refused_naming_it(case, photos, tmp_path):
    text, expected = BAD_NUMBERS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    home = tmp_path / "home"
    result = _materialize_in_process(home, config, str(photos))
    _assert_refused_before_work(result, home, expected, case)
    assert len(result.stderr.split("Error: ", 1)[1].strip().splitlines()) == 1
    assert not home.exists()


@pytest.mark.parametrize("case", NOT_SETTINGS)
def test_a_file_that_is_not_settings_fails_before_any_work(case, photos, tmp_path):
    text, expected = NOT_SETTINGS[case]
    config = tmp_path / "bad.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    home = tmp_path / "home"
    result = _materialize_in_process(home, config, str(photos))
    _assert_refused_before_work(result, home, expected, case)
    assert len(result.stderr.split("Error: ", 1)[1].strip().splitlines()) == 1
    assert not home.exists()


def test_a_settings_file_saved_with_a_bom_and_crlf_is_read_as_meant(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "vsearch.yaml").write_bytes(b"\xef\xbb\xbfindex:\r\n  index_type: flat\r\n"
                                        b"subset:\r\n  fraction: 0.5\r\n")
    settings = load_settings(home)
    assert (settings.index.index_type, settings.subset.fraction) == ("flat", 0.5)


def test_a_homes_settings_file_with_a_section_twice_is_refused_naming_the_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "vsearch.yaml").write_text("index:\n  index_type: flat\nindex:\n  nprobe: 4\n")
    with pytest.raises(SettingsError, match=r"vsearch.yaml: not valid YAML \(line 3, column 1\): "
                                            r"'index' is given twice \(first on line 1\)"):
        load_settings(home)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    """Only a key written twice is refused: `<<: *defaults` then one of its keys is not that."""
    config = tmp_path / "merge.yaml"
    config.write_text("x-common: &common {nprobe: 4, efSearch: 64}\nindex:\n  <<: *common\n"
                      "  nprobe: 8\n")
    assert read_settings_file(config)["index"] == {"nprobe": 8, "efSearch": 64}


GOOD_GROUNDING = b"\xef\xbb\xbfgroup,image\r\ncat,a.jpg\r\ncat,b.jpg\r\n"


def _manifest(*paths: str) -> pa.Table:
    return pa.table({"id": [f"{i:016x}" for i in range(len(paths))], "path": list(paths),
                     "uri": [f"/photos/{p}" for p in paths], "status": ["ok"] * len(paths)})


def test_a_grounding_set_saved_with_a_bom_and_crlf_is_read_as_meant(tmp_path):
    path = tmp_path / "pets.csv"
    path.write_bytes(GOOD_GROUNDING)
    [pets] = load_grounding_sets([str(path)], _manifest("a.jpg", "b.jpg"))
    assert pets.name == "pets" and pets.group_names == ["cat"]
    assert pets.group_of == {"0000000000000000": 0, "0000000000000001": 0}


def test_a_grounding_set_line_that_is_not_utf8_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "pets.csv"
    path.write_bytes(GOOD_GROUNDING + "caf\xe9,c.jpg\r\n".encode("latin-1"))
    with pytest.raises(ValueError) as refused:
        load_grounding_sets([str(path)], _manifest("a.jpg", "b.jpg"))
    assert str(refused.value) == (f"grounding set 'pets' ({path}), line 4: not UTF-8 text (byte "
                                  "0xe9 at position 4 of the line): save the file as UTF-8")


@pytest.fixture
def site(tmp_path) -> str:
    """A real HTTP server on 127.0.0.1 serving one photo as /cat.jpg."""
    served = tmp_path / "site"
    served.mkdir()
    (served / "cat.jpg").write_bytes(CAT)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("given", ["file", "stdin"])
def test_a_url_list_line_that_is_not_utf8_is_named_and_skipped_and_the_rest_land(given, site,
                                                                                 tmp_path):
    urls = (b"\xef\xbb\xbf" + f"{site}/cat.jpg\r\n".encode()
            + f"# caf\xe9 photos\n{site}/caf\xe9.jpg\n".encode("latin-1"))
    url_file = tmp_path / "urls.txt"
    url_file.write_bytes(urls)
    target, manifest = tmp_path / "photos", tmp_path / "manifest.jsonl"
    args = ["download", str(url_file) if given == "file" else "-", "--to", str(target),
            "--manifest", str(manifest), "--home", str(tmp_path / "home")]
    result = CliRunner().invoke(main, args, input=urls if given == "stdin" else None)
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    source = str(url_file) if given == "file" else "<stdin>"
    for line in (2, 3):
        assert f"{source}, line {line}: not UTF-8 text (byte 0xe9" in result.stderr
    assert "this run: invalid_url 1, ok 1" in result.stdout  # the comment line is no URL
    assert [p.read_bytes() for p in target.rglob("*.jpg")] == [CAT]
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    refused = [r for r in records if r["status"] == "invalid_url"]
    assert [(r["url"], r["error"].split(": ")[0]) for r in refused] == [
        (f"{site}/caf\\xe9.jpg", f"{source}, line 3")]


def test_several_problems_give_one_line_each_and_the_home_is_left_as_it_was(photos, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    saved = yaml.safe_dump({"source": {"uri": str(photos)}, "index": {"index_type": "flat"}})
    (home / "vsearch.yaml").write_text(saved)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"subset": {"fraction": 2, "sed": 1},
                                      "index": {"nprobe": 0}, "model": {"batch_size": -1}}))
    result = _materialize(home, config, str(photos))
    _assert_refused_before_work(result, home, ["subset.fraction", "subset.sed", "index.nprobe",
                                               "model.batch_size"], "four problems at once")
    assert len(result.stderr.split("Error: ", 1)[1].strip().splitlines()) == 4
    assert (home / "vsearch.yaml").read_text() == saved
    assert sorted(p.name for p in home.iterdir()) == ["vsearch.yaml"]


def test_every_problem_is_said_in_one_pass_choices_and_the_source_included(tmp_path):
    """A wrong choice (model.device: gpu, index.index_type: annoy) used to be checked only once
    the rest of its section was right, and a missing source only once the settings were: each
    fix uncovered the next mistake. Now one run names them all, one line each."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"device": "gpu", "batch_size": 0, "colour": "red"},
        "subset": {"fraction": 1.5, "fracton": 0.5},
        "index": {"index_type": "annoy", "storage": "PQ4", "nprobe": 0},
        "clusters": {"method": "dbscan"}}))
    home = tmp_path / "home"
    result = _materialize_in_process(home, config, str(tmp_path / "no-such-folder"))
    expected = ["model.device must be one of ('cpu', 'cuda'), got 'gpu'", "model.batch_size",
                "model.colour: unknown setting", "subset.fraction must be in (0.0, 1.0], got 1.5",
                "subset.fracton: unknown setting (did you mean 'fraction'?)",
                "index.index_type must be one of", "index.storage must be one of", "index.nprobe",
                "clusters.method must be one of", "source.uri", "does not exist"]
    _assert_refused_before_work(result, home, expected, "eleven problems at once")
    lines = result.stderr.split("Error: ", 1)[1].strip().splitlines()
    assert len(lines) == 10, lines
    assert len([line for line in lines if "model.device" in line]) == 1
    assert not home.exists()


@pytest.mark.parametrize(("settings", "named"), [
    ({"model": {"name": "resnet9000", "precision": "fp8", "engine": "trt", "view": "side"}},
     ["model.name", "model.precision", "model.engine", "model.view"]),
    ({"clusters": {"method": "dbscan", "reduce": "tsne", "min_cluster_size": 1}},
     ["clusters.method", "clusters.reduce", "clusters.min_cluster_size"]),
])
def test_each_wrong_choice_of_a_section_is_named(tmp_path, settings, named):
    with pytest.raises(SettingsError) as raised:
        load_settings(tmp_path, settings)
    lines = str(raised.value).splitlines()
    assert sorted(line.split(" ")[0].rstrip(":") for line in lines) == sorted(named), lines


def test_a_missing_folder_fails_before_any_work(tmp_path):
    config = tmp_path / "empty.yaml"
    config.write_text("")
    home = tmp_path / "home"
    result = _materialize(home, config, str(tmp_path / "no" / "such" / "folder"))
    _assert_refused_before_work(result, home, ["source.uri", "does not exist"], "missing folder", 1)
    assert not home.exists()


def test_a_force_include_entry_that_names_no_file_fails_before_any_work(photos, tmp_path):
    first = sorted(p.name for p in photos.iterdir())[0]
    config = tmp_path / "force.yaml"
    config.write_text(yaml.safe_dump({"subset": {"fraction": 0.5, "force_include": [
        first, "cats/missing.jpg", "0123456789abcdef"]}}))
    home = tmp_path / "home"
    result = _materialize(home, config, str(photos))
    _assert_refused_before_work(result, home, ["subset.force_include", "2 of 3",
                                               "'cats/missing.jpg'", "'0123456789abcdef'"],
                                "force_include entries that name no file", 1)
    assert first not in result.stderr.split("Error: ", 1)[1]
    assert not home.exists()


def test_force_include_matches_a_path_a_uri_or_the_id_of_a_file_not_yet_ingested(photos, tmp_path):
    """The positive side of the check, in process: nothing is written while it runs."""
    from vsearch_pipeline.core.manifest import content_hash, image_id
    from vsearch_pipeline.runner import check_before_work
    from vsearch_pipeline.settings import load_settings

    files = sorted(photos.iterdir())
    entries = [files[0].name, str(files[1]), image_id(content_hash(files[2].read_bytes()))]
    home = tmp_path / "home"
    settings = load_settings(home, {"source": {"uri": str(photos)},
                                    "subset": {"force_include": entries}})
    listing = check_before_work(home, settings)
    assert [o.path for o in listing] == [f.name for f in files]
    assert not home.exists()


@pytest.mark.slow
@pytest.mark.usefixtures("s3_credentials")
def test_missing_bucket_and_missing_key_on_s3_fail_before_any_work(s3_endpoint, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="present")
    client.put_object(Bucket="present", Key="photos/a.jpg", Body=b"\xff\xd8\xff not much")
    config = tmp_path / "s3.yaml"
    config.write_text(yaml.safe_dump({"source": {"endpoint_url": s3_endpoint}}))
    home = tmp_path / "home"
    result = _materialize(home, config, "s3://no-such-bucket/photos")
    _assert_refused_before_work(result, home, ["source.uri", "'s3://no-such-bucket/photos'",
                                               "does not exist"], "missing S3 bucket", 1)
    result = _materialize(home, config, "s3://present/nothing-here")
    _assert_refused_before_work(result, home, ["source.uri", "does not exist"],
                                "missing S3 prefix", 1)
    config.write_text(yaml.safe_dump({"source": {"endpoint_url": s3_endpoint},
                                      "subset": {"force_include": ["photos/b.jpg"]}}))
    result = _materialize(home, config, "s3://present/photos")
    _assert_refused_before_work(result, home, ["subset.force_include", "'photos/b.jpg'"],
                                "force_include missing on S3", 1)
    assert not home.exists()


def test_zz_print_what_was_checked():
    """The figures: every case tried and the message it got (run with -s)."""
    print(f"\n{len(CHECKED)} bad configurations refused before any work:")
    for case, message in CHECKED:
        print(f"  {case:<42} {message.splitlines()[0][:150]}"
              + (f"  (+{len(message.splitlines()) - 1} more lines)" if "\n" in message else ""))
