"""The case matrix: parsing, model selection by level, expansion, identity keys (no child processes)."""
import pytest

from bench.cases import Case, CaseError, expand, parse_ints, parse_resolution, select_models
from bench.cases import IDENTITY, case_key


@pytest.mark.parametrize("text,hw", [("512", (512, 512)), ("1024x2048", (1024, 2048)), (" 64X128 ", (64, 128))])
def test_parse_resolution(text, hw):
    assert parse_resolution(text) == hw


@pytest.mark.parametrize("text", ["0", "-512", "512x0", "abc", "512x", "x512", "1.5", ""])
def test_parse_resolution_rejects(text):
    with pytest.raises(CaseError):
        parse_resolution(text)


def test_parse_ints():
    assert parse_ints("1,2,2,4", "--threads") == [1, 2, 4]
    for bad in ("0", "a", "1,,x", ""):
        with pytest.raises(CaseError):
            parse_ints(bad, "--batch")


def test_select_models_levels():
    assert select_models(None, "model") == ["evit-b1:msla", "evit-b1:relu-linear", "evit-b1:softmax",
                                            "evit-b1:large-kernel"]
    assert select_models(None, "block") == ["block:msla", "block:relu-linear", "block:softmax", "block:large-kernel"]
    both = select_models(None, "both")
    assert len(both) == 8 and both[:4] == select_models(None, "model")
    assert select_models(["evit-b1:msla"], "block") == ["block:msla"]
    assert select_models(["block:softmax"], "both") == ["block:softmax"]
    with pytest.raises(CaseError):
        select_models(["block:softmax"], "model")
    with pytest.raises(CaseError):
        select_models(["no-such-model"], "both")
    with pytest.raises(CaseError):
        select_models(None, "everything")


def test_expand_matrix_and_keys():
    cases = expand(["evit-b1:msla", "block:msla"], [(512, 512), (1024, 2048)], [("cpu", "CPU X")], ["eager"],
                   {"cpu": ["fp32"], "cuda": ["fp16"]}, [1, 2], [1, 2])
    assert len(cases) == 2 * 2 * 2 * 2
    assert len({c.case_id for c in cases}) == len(cases)
    c = next(c for c in cases if c.model == "block:msla" and c.height == 1024)
    assert c.level == "block" and c.family == "block" and c.variant == "msla"
    assert c.tokens == (1024 // 16) * (2048 // 16)
    # the key is the schema's, computed from the identity columns only
    assert set(c.identity()) == set(IDENTITY)
    assert c.case_id == case_key(c.as_row())
    # travels as JSON-able spec and back
    assert Case.from_spec(c.to_spec()) == c


def test_cuda_rows_have_no_thread_sweep():
    cases = expand(["block:msla"], [(64, 64)], [("cpu", "C"), ("cuda:0", "G")], ["eager"],
                   {"cpu": ["fp32"], "cuda": ["fp16"]}, [1], [1, 2])
    assert sorted((c.device, c.threads, c.precision) for c in cases) == [
        ("cpu", 1, "fp32"), ("cpu", 2, "fp32"), ("cuda:0", 0, "fp16")]
