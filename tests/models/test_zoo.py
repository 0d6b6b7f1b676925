"""The zoo's loader fails clearly when a model is absent; materialized models run on their samples."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt.errors import OnnxoptError
from onnxopt.models.zoo import BUILDERS, ZooModelMissing, load_zoo_model, zoo_dir


def test_missing_model_raises_with_the_command_to_fix_it(tmp_path):
    with pytest.raises(ZooModelMissing, match="python -m onnxopt.models.zoo --only minilm"):
        load_zoo_model("minilm", cache=tmp_path)
    with pytest.raises(OnnxoptError, match="unknown zoo model"):
        load_zoo_model("resnet9000", cache=tmp_path)


def test_zoo_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXOPT_ZOO", str(tmp_path))
    assert zoo_dir() == tmp_path


@pytest.mark.real
@pytest.mark.parametrize("name", list(BUILDERS))
def test_zoo_model_runs_on_its_samples(name):
    try:
        model, calib, evals = load_zoo_model(name)
    except ZooModelMissing as exc:
        pytest.skip(str(exc))
    meta = json.loads((model.parent / "meta.json").read_text())
    assert meta["calib"] >= 16 and meta["eval"] >= 32
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for folder in (calib, evals):
        with np.load(sorted(folder.glob("*.npz"))[0]) as sample:
            feeds = {k: sample[k] for k in sample.files}
        assert set(feeds) == {i.name for i in sess.get_inputs()}
        assert all(np.isfinite(out).all() for out in sess.run(None, feeds))
