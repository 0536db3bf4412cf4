"""The --extension parser: formats, subsets, flags, aliases and keyword overrides."""

import pytest

from denet.data import parse_extension
from denet.errors import DataError


def test_formats_subsets_and_keys():
    e = parse_extension(
        "mscoco,2014-train,2014-val,scale=512,crop=512,augment_photo,"
        "crop_mode=denet,scale_mode=large,mirroring=0"
    )
    assert e.format == "mscoco" and e.subsets == ("2014-train", "2014-val")
    o = e.options
    assert (o["scale"], o["crop"], o["crop_mode"], o["scale_mode"]) == (512, 512, "denet", "large")
    assert o["augment_photo"] is True and o["mirror"] is False
    assert parse_extension("voc,2007-test").subsets == ("2007-test",)
    assert parse_extension("seglist,val").subsets == ("val",)
    e = parse_extension("JPEG")
    assert (e.format, e.image_ext) == ("dir", "JPEG")
    assert parse_extension("png").options["crop"] is None
    assert parse_extension("imagenet").options["crop"] == 224  # DeNet's ImageLoader default
    assert parse_extension("imagenet,crop=none").options["crop"] == 0


def test_keyword_overrides():
    e = parse_extension("png,mirror", {"mirror": None, "distort": ["o4", "m50"], "crop": 6})
    assert e.options["mirror"] is True  # None leaves the extension's value
    assert e.options["distort"] == "o4 m50" and e.options["crop"] == 6
    assert parse_extension("png", {"augment_mirror": True}).options["mirror"] is True
    assert parse_extension("png", {"distort": []}).options["distort"] is None


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("png,crop=abc", "crop='abc'"),
        ("png,crop", "needs a value"),
        ("png,mirror=maybe", "boolean"),
        ("imagenet,crop_mode=resnet", "broken in DeNet"),
        ("imagenet,crop_mode=ssd", "not supported"),
        ("png,area_min=0", "area_min"),
        ("png,random_scale=0.5", "random_scale"),
        ("npz", "npz is not supported"),
        ("imagenet,null", "null"),
        ("seglist,skip_difficult", "applies only to voc"),
    ],
)
def test_bad_extensions(text, match):
    with pytest.raises(DataError, match=match):
        parse_extension(text)


@pytest.mark.parametrize("key", ["crop", "scale"])
def test_sizes_that_would_exhaust_memory_are_refused_up_front(key):
    with pytest.raises(DataError, match=f"{key}=100000 is larger than 16384 pixels"):
        parse_extension(f"png,{key}=100000")
    assert parse_extension(f"png,{key}=16384").options[key] == 16384
