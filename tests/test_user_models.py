"""Users' models: the register_model decorator and its defaults, loading model sources, and check_model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models.complexity import count_macs
from models.registry import (DuplicateModelError, ModelCheckError, build_model, check_model, check_resolution,
                             get_model_info, list_models, register_model, resolve_models)
from models.user import MODELS_FROM_ENV, ModelSourceError, load_from_env, load_model_sources

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_model.py"
BUILT_IN = list_models()  # at collection: before any test registers a model (tests/conftest.py undoes them)


class Strided(nn.Module):
    """A minimal dense model: one stride-s conv to `classes` channels."""

    def __init__(self, classes: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Returns(nn.Module):
    """A module whose forward returns a fixed function of the input (the non-dense outputs)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor):
        return self.fn(self.conv(x))


# ---------------------------------------------------------------------------------------------------------------
# the decorator


def test_decorator_defaults_read_classes_and_stride_off_one_meta_forward():
    devices = []

    def builder() -> nn.Module:
        devices.append(torch.empty(0).device.type)  # the ambient device the builder is called under
        return Strided(classes=5, stride=8)

    assert register_model("test-user-net")(builder) is builder  # the builder is returned unchanged
    info = get_model_info("test-user-net")
    assert (info.family, info.mixer, info.input_size, info.in_channels, info.input_stride) == (
        "user", "custom", (512, 512), 3, 1)
    assert devices == []  # registering, listing and resolving build nothing
    assert list_models("user") == ["test-user-net"] and "test-user-net" in list_models()
    assert resolve_models(["user"]) == resolve_models(["test-user-*"]) == ["test-user-net"]
    assert devices == []
    assert (info.num_classes, info.out_stride) == (5, 8)
    assert devices == ["meta"]  # one forward, on the meta device, for both values
    assert check_resolution("test-user-net", 200, 136) is None  # no resolution forced on users' models
    assert build_model("test-user-net")(torch.randn(1, 3, 64, 64)).shape == (1, 5, 8, 8)


def test_declared_metadata_is_used_without_building():
    def builder() -> nn.Module:
        raise AssertionError("declared metadata must not build the model")

    register_model("test-declared", num_classes=7, out_stride=4, size_multiple=16, input_size=(64, 128))(builder)
    register_model("test-ade", dataset="ade20k", out_stride=8)(builder)
    info, ade = get_model_info("test-declared"), get_model_info("test-ade")
    assert (info.num_classes, info.out_stride, info.input_size) == (7, 4, (64, 128))
    assert (ade.num_classes, ade.input_size) == (150, (512, 512))  # a known dataset gives classes and size
    assert "multiples of 16" in check_resolution("test-declared", 200, 136)


def test_register_model_rejects_a_taken_name_an_unknown_family_and_a_missing_name():
    with pytest.raises(DuplicateModelError, match="'evit-b1:msla' registered twice"):
        register_model("evit-b1:msla")(lambda: Strided(19, 8))
    with pytest.raises(ValueError, match="family 'mine' is not accepted; accepted: .*user"):
        register_model("test-family", family="mine")
    with pytest.raises(TypeError, match=r"@register_model\('my-net'\)"):
        register_model(lambda: Strided(1, 1))  # bare @register_model: the name is missing
    assert "test-family" not in list_models()


def test_undeclared_values_of_a_broken_model_raise_the_check_reason():
    register_model("test-broken")(lambda: 3)
    with pytest.raises(ModelCheckError, match="returned int, not an nn.Module"):
        get_model_info("test-broken").num_classes


# ---------------------------------------------------------------------------------------------------------------
# model sources


def test_example_model_loads_builds_runs_and_counts():
    assert load_model_sources([str(EXAMPLE)]) == ["example-segnet"]
    info = get_model_info("example-segnet")
    assert info.family == "user" and info.num_classes == 19 and info.out_stride in (4, 8)
    s = info.out_stride
    assert check_model("example-segnet", 128, 128) is None
    model = build_model("example-segnet")
    assert isinstance(model, nn.Module) and not model.training
    with torch.no_grad():
        y = model(torch.randn(1, 3, 128, 128))
    assert y.shape == (1, 19, 128 // s, 128 // s) and torch.isfinite(y).all()
    macs = count_macs("example-segnet", 128, 128)
    assert macs > 0 and count_macs("example-segnet", 256, 256) == 4 * macs  # convolutions only: linear in pixels


def test_loading_a_source_twice_is_harmless(monkeypatch, tmp_path):
    first = load_model_sources([str(EXAMPLE)])
    module = sys.modules[next(n for n in sys.modules if n.startswith("densebench_user_custom_model_"))]
    other_spelling = os.path.relpath(EXAMPLE.parent.parent / "examples" / ".." / "examples" / EXAMPLE.name)
    assert load_model_sources([str(EXAMPLE), other_spelling]) == first == ["example-segnet"]
    monkeypatch.setenv(MODELS_FROM_ENV, os.pathsep.join([str(EXAMPLE), "", str(EXAMPLE)]))
    assert load_from_env() == first
    assert sys.modules[module.__name__] is module  # not executed again
    assert list_models("user") == ["example-segnet"]
    # two files of the same name are two sources (the module name comes from the whole path)
    twin = tmp_path / "custom_model.py"
    twin.write_text(_source("test-twin"))
    assert load_model_sources([str(twin)]) == ["test-twin"]


def test_load_from_env_without_the_variable_loads_nothing(monkeypatch):
    monkeypatch.delenv(MODELS_FROM_ENV, raising=False)
    assert load_from_env() == []


def test_a_dotted_module_source_is_imported_by_name(monkeypatch, tmp_path):
    pkg = tmp_path / "test_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(_source("test-dotted"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_model_sources(["test_user_pkg.nets"]) == ["test-dotted"]
        assert load_model_sources(["test_user_pkg.nets"]) == ["test-dotted"]
        assert get_model_info("test-dotted").num_classes == 2
    finally:
        for name in ("test_user_pkg.nets", "test_user_pkg"):
            sys.modules.pop(name, None)


def _source(name: str, before: str = "", after: str = "") -> str:
    return (f"from torch import nn\nfrom models.registry import register_model\n{before}\n"
            f"@register_model({name!r})\ndef build():\n    return nn.Conv2d(3, 2, 4, 4)\n{after}\n")


BAD_SOURCES = {  # case -> (file name or None for a spec as is, file text or spec, words the message must hold)
    "missing": ("nope.py", None, "no such file"),
    "not .py": ("model.txt", _source("test-txt"), "is not a .py file"),
    "folder": ("pkgdir", "", "is a folder"),
    "syntax error": ("broken.py", "def f(:\n", "failed to import: SyntaxError"),
    "raises at import": ("raising.py", _source("test-half", after="raise RuntimeError('boom at import')"),
                         "failed to import: RuntimeError: boom at import"),
    "missing import": (None, "densebench_no_such_package.nets", "failed to import: ModuleNotFoundError"),
    "not a name": (None, "not a module!", "neither a .py path nor a module name"),
    "built-in clash": ("clash.py", _source("test-ok") + _source("evit-b1:msla"),
                       "registers 'evit-b1:msla', the name of a built-in model"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_each_bad_source_is_one_line_naming_what_is_accepted(case, tmp_path):
    file_name, text, words = BAD_SOURCES[case]
    if file_name is None:
        spec = text
    else:
        path = tmp_path / file_name
        if file_name == "pkgdir":
            path.mkdir()
        elif text is not None:
            path.write_text(text)
        spec = str(path)
    with pytest.raises(ModelSourceError) as err:
        load_model_sources([spec])
    msg = str(err.value)
    assert words in msg and "accepted:" in msg and "\n" not in msg, msg
    # a source that fails half-way leaves nothing behind: not its models, not its module
    assert list_models() == BUILT_IN
    assert not [n for n in sys.modules if n.startswith("densebench_user_")]
    assert get_model_info("evit-b1:msla").family == "evit-variant"


def test_a_name_clash_between_two_sources_names_the_first(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(_source("test-shared"))
    b.write_text(_source("test-shared"))
    load_model_sources([str(a)])
    with pytest.raises(ModelSourceError, match=r"'test-shared', already registered by model source '.*a\.py'"):
        load_model_sources([str(b)])


# ---------------------------------------------------------------------------------------------------------------
# check_model


def _raise() -> nn.Module:
    raise ValueError("no weights for this size")


CHECKS = {  # builder -> the reason check_model must give at 64x64
    "raising builder": (_raise, "builder of 'test-check' raised ValueError: no weights for this size"),
    "not a module": (lambda: "a model", "builder of 'test-check' returned str, not an nn.Module"),
    "raising forward": (lambda: nn.Conv2d(4, 4, 1), "forward of 'test-check' at 64x64 (meta device) raised"),
    "pooled vector": (lambda: Returns(lambda y: y.mean(dim=(2, 3))), "is a 2-D tensor (2, 4), not dense"),
    "non-integer stride": (lambda: Returns(lambda y: nn.functional.adaptive_avg_pool2d(y, 7)),
                           "is a 4-D tensor (2, 4, 7, 7), not dense"),
    "tuple": (lambda: Returns(lambda y: (y, y)), "is a tuple, not dense"),
    "batch folded": (lambda: Returns(lambda y: y.reshape(1, 8, 64, 64)), "(batch 2) is a 4-D tensor (1, 8, 64, 64)"),
    "anisotropic": (lambda: Returns(lambda y: y[:, :, ::2, ::4]), "is a 4-D tensor (2, 4, 32, 16), not dense"),
}


@pytest.mark.parametrize("case", list(CHECKS))
def test_check_model_gives_the_one_line_reason(case):
    builder, reason = CHECKS[case]
    register_model("test-check")(builder)
    got = check_model("test-check", 64, 64, batch=2)
    assert got is not None and reason in got and "\n" not in got, got


def test_check_model_passes_a_dense_model_and_compares_declared_values():
    register_model("test-dense")(lambda: Strided(3, 4))
    register_model("test-wrong-stride", out_stride=8)(lambda: Strided(3, 4))
    register_model("test-wrong-classes", num_classes=19)(lambda: Strided(3, 4))
    assert check_model("test-dense", 64, 96, batch=2) is None
    assert "declares output stride 8 but outputs stride 4" in check_model("test-wrong-stride", 64, 64)
    assert "declares 19 classes but outputs 3 channels" in check_model("test-wrong-classes", 64, 64)


@pytest.mark.parametrize("name", BUILT_IN)
def test_check_model_passes_every_built_in_model(name):
    m = max(get_model_info(name).size_multiple, 32)
    assert check_model(name, 2 * m, 3 * m, batch=2) is None
