"""register_model checks every keyword at registration (issue 20): each absurd value the hostile-user pass found
(zero or negative sizes, strides of 0, in_channels 0, `published` of the wrong shape, names --models can never
name) is refused with one line naming the keyword, and the registry is left as it was. These values used to
reach arithmetic later: ZeroDivisionError, RuntimeError and AttributeError tracebacks in `run` and `models`."""
from __future__ import annotations

import pytest

from models.registry import (ModelRegistrationError, ModelRegistrationTypeError, Published, get_model_info,
                             list_models, register_model)
from models.user import ModelSourceError, load_model_sources


@pytest.mark.parametrize("kw,needle", [
    (dict(input_size=(0, 512)), "input_size (0, 512)"),
    (dict(input_size=(-512, 512)), "input_size (-512, 512)"),
    (dict(input_size=(512,)), "input_size (512,)"),
    (dict(input_size="512x512"), "input_size '512x512'"),
    (dict(input_size=(40000, 512)), "from 1 to 32768"),
    (dict(out_stride=0), "out_stride 0"),
    (dict(input_stride=0), "input_stride 0"),
    (dict(token_stride=0), "token_stride 0"),
    (dict(size_multiple=-16), "size_multiple -16"),
    (dict(in_channels=0), "in_channels 0"),
    (dict(in_channels=True), "in_channels True"),  # bool is not an int here
    (dict(num_classes=-1), "num_classes -1"),
    (dict(num_classes=2.5), "num_classes 2.5"),
    (dict(family=None), "family None"),
    (dict(mixer=""), "mixer ''"),
    (dict(dataset="imagenet"), "dataset 'imagenet'"),
    (dict(description=None), "description None"),
    (dict(published={"params_m": 4.8}), "published {'params_m': 4.8}"),
    (dict(published=Published(params_m=0)), "published.params_m 0"),
    (dict(published=Published(macs_g=float("nan"))), "published.macs_g nan"),
    (dict(published=Published(latency_ms=[24.3])), "published.latency_ms [24.3]"),
    (dict(published=Published(latency_ms={"orin": "fast"})), "published.latency_ms {'orin': 'fast'}"),
    (dict(published=Published(miou=180.0)), "published.miou 180.0"),
    (dict(published=Published(source=None)), "published.source None"),
])
def test_each_absurd_keyword_is_refused_with_one_line(kw, needle):
    before = list_models()
    with pytest.raises(ModelRegistrationError) as e:
        register_model("test-absurd", **kw)(lambda: None)
    text = str(e.value)
    assert text.startswith("register_model('test-absurd'): ") and needle in text and "\n" not in text
    assert "is not accepted; accepted: " in text and list_models() == before


@pytest.mark.parametrize("name", ["", "   ", " lead", "trail ", "a,b", "evit-b1:*", "x?", "x[1]", "two\nlines",
                                  "nul\x00", "tab\there", "sep\u2028", "all", "published", "user", "block"])
def test_names_that_models_could_never_name_are_refused(name):
    with pytest.raises(ModelRegistrationError, match=r"^register_model: name .* accepted: a name --models can name"):
        register_model(name)(lambda: None)
    assert name not in list_models()


def test_wrong_types_are_type_errors_too_and_good_values_are_stored_plainly():
    import numpy as np

    with pytest.raises(TypeError, match=r"@register_model\('my-net'\)"):
        register_model(None)
    with pytest.raises(ModelRegistrationTypeError, match="decorates a builder"):
        register_model("test-not-callable")(42)
    register_model("test fine: spaces/slashes]", input_size=[np.int64(64), 96], out_stride=np.int64(8),
                   published=Published(params_m=1, latency_ms={"CPU, eager": 2}, miou=0))(lambda: None)
    info = get_model_info("test fine: spaces/slashes]")
    assert info.input_size == (64, 96) and type(info.input_size[0]) is int and type(info.declared_stride) is int


def test_the_largest_side_is_the_one_res_accepts():
    from bench.plan.parse import MAX_SIDE
    from models import registry

    assert registry.MAX_SIDE == MAX_SIDE


def test_a_model_file_with_absurd_metadata_fails_to_import_with_one_line(tmp_path):
    src = tmp_path / "absurd.py"
    src.write_text("from torch import nn\nfrom models.registry import register_model\n"
                   "register_model('test-file-ok')(lambda: nn.Identity())\n"
                   "register_model('test-file-zero', token_stride=0)(lambda: nn.Identity())\n")
    with pytest.raises(ModelSourceError) as e:
        load_model_sources([str(src)])
    assert "token_stride 0 is not accepted" in str(e.value) and "\n" not in str(e.value)
    assert "test-file-ok" not in list_models()  # a source that fails half way leaves no model behind
