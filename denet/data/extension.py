"""DeNet's ``--extension`` string: ``FORMAT,SUBSET,key=value,flag,...``.

The first token picks the format (``imagenet``, ``mscoco``, ``voc``, ``seglist``, ``npy``, or an
image file extension such as ``png`` for a Basic Dir). Later tokens are subsets (``2007-test``,
``train``), ``key=value`` loader options, or bare flags (a bare flag means ``True``). Every key
is checked against one table; an unknown key is a ``DataError`` with a "did you mean".
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from ..errors import DataError

FORMATS = ("dir", "npy", "imagenet", "mscoco", "voc", "seglist")
DETECTION_FORMATS = ("mscoco", "voc")
IMAGE_EXTENSIONS = (
    "png",
    "jpg",
    "jpeg",
    "ppm",
    "pgm",
    "pbm",
    "pnm",
    "bmp",
    "gif",
    "tif",
    "tiff",
    "webp",
)

SCALE_MODES = ("small", "large", "warp")
CROP_MODES = ("default", "center", "lenet", "denet")
PAD_MODES = ("constant", "reflect")

MAX_SIDE = 16384  # crop= and scale= beyond this would allocate gigabytes per image

# key -> (kind, formats it applies to or None for all). Kinds: bool, int, float, size (an int
# or "none"), str, or a tuple of allowed words.
KEYS = {
    "crop": ("size", None),
    "scale": ("size", None),
    "scale_mode": (SCALE_MODES, None),
    "crop_mode": (CROP_MODES, None),
    "max_trials": ("int", None),
    "area_min": ("float", None),
    "aspect_factor": ("float", None),
    "augment_photo": ("bool", None),
    "augment_color": ("bool", None),
    "subtract_mean": ("bool", None),
    "multicrop": ("bool", None),
    "mirror": ("bool", None),
    "distort": ("str", None),
    "random_scale": ("float", None),
    "random_rotate": ("float", None),
    "pad_mode": (PAD_MODES, None),
    "channels": ("int", None),
    "skip_broken": ("bool", None),
    "check_onscreen": ("float", DETECTION_FORMATS),
    "check_center": ("bool", DETECTION_FORMATS),
    "bbox_only": ("bool", DETECTION_FORMATS),
    "skip_crowd": ("bool", ("mscoco",)),
    "masks": ("bool", ("mscoco",)),
    "keypoints": ("bool", ("mscoco",)),
    "skip_difficult": ("bool", ("voc",)),
    "list_dir": ("str", ("seglist",)),
    "seg": ("bool", ("voc",)),
}
ALIASES = {"mirroring": "mirror", "augment_mirror": "mirror", "distort_mode": "distort"}
# DeNet keys that have no meaning here; rejected with the reason rather than ignored.
REJECTED = {
    "images_per_subset": "DeNet loaded a dataset in subsets of this many images; denet streams "
    "images through DataLoader workers (--thread-num), remove the key",
    "subset_num": "DeNet loaded a dataset in subsets; denet streams images through DataLoader "
    "workers, remove the key (use --max-samples to train on fewer images)",
    "null": "the extra 'null' class of DeNet's ImageNet loader is not supported",
}
REJECTED_CROP_MODES = {
    "ssd": "crop_mode=ssd is not supported; use crop_mode=denet (DeNet's detection crop) or "
    "crop_mode=lenet",
    "resnet": "crop_mode=resnet was broken in DeNet and is not supported; use crop_mode=lenet "
    "(Inception-style crop) or crop_mode=default",
}

# Defaults before the user's keys; None = off. Loader formats (imagenet, mscoco, voc) take
# DeNet's ImageLoader defaults; Basic Dir and npy return images as stored.
_COMMON_DEFAULTS = {
    "crop": None,
    "scale": None,
    "scale_mode": "small",
    "crop_mode": "default",
    "max_trials": 10,
    "area_min": 0.08,
    "aspect_factor": 0.75,
    "augment_photo": False,
    "augment_color": False,
    "subtract_mean": False,
    "multicrop": False,
    "mirror": False,
    "distort": None,
    "random_scale": 0.0,
    "random_rotate": 0.0,
    "pad_mode": "constant",
    "channels": None,
    "skip_broken": False,
    "check_onscreen": 0.5,
    "check_center": False,
    "bbox_only": False,
    "skip_crowd": False,
    "masks": False,
    "keypoints": False,
    "skip_difficult": False,
    "list_dir": None,
    "seg": False,
}
FORMAT_DEFAULTS = {
    "dir": {},
    "npy": {},
    "imagenet": {"crop": 224, "mirror": True, "channels": 3},
    "mscoco": {"crop": 224, "mirror": True, "channels": 3},
    "voc": {"crop": 224, "mirror": True, "channels": 3},
    "seglist": {"mirror": True, "pad_mode": "reflect", "channels": 3},
}

# voc,...,seg (VOC's segmentation layout) returns images as stored, as seglist does, unless the
# user's keys ask for a scale or crop (DeNet's 224 crop is for its detection loader).
VOC_SEG_DEFAULTS = {"crop": None, "scale": 0}

_SUBSET_RE = {
    "mscoco": re.compile(r"^\d{4}-[a-z][a-z-]*$"),
    "voc": re.compile(r"^\d{4}-[a-z][a-z_-]*$"),
    "seglist": re.compile(r"^(train|val|test)$"),
}


@dataclass(frozen=True)
class Extension:
    """A parsed ``--extension``: ``format`` is one of FORMATS; ``image_ext`` is set for Basic Dir."""

    format: str
    subsets: tuple = ()
    options: dict = field(default_factory=dict)
    image_ext: str | None = None


def _truthy(key, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DataError(f"--extension: {key}={value!r} is not a boolean (use 1/0 or true/false)")


def _convert(key, value):
    kind = KEYS[key][0]
    try:
        if kind == "bool":
            return _truthy(key, value)
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "size":
            if value is None:
                return None  # unset: the format's default applies
            if str(value).strip().lower() in ("none", "0", "off"):
                return 0  # explicitly off
            if (
                isinstance(value, bool)
                or float(value) != int(float(value))
                or int(float(value)) < 0
            ):
                raise ValueError
            if int(float(value)) > MAX_SIDE:
                raise DataError(
                    f"--extension: {key}={value} is larger than {MAX_SIDE} pixels, the largest "
                    "image side the loader makes (a float32 RGB image of that side is 3 GB)"
                )
            return int(float(value))
        if kind == "str":
            if value is True:
                raise ValueError
            if isinstance(value, (list, tuple)):  # --distort-mode o4 m50 arrives as a list
                return " ".join(str(v) for v in value) or None
            return None if value is None else str(value)
    except (TypeError, ValueError):
        raise DataError(f"--extension: {key}={value!r} is not a valid {kind}") from None
    # a tuple of allowed words
    word = str(value).strip().lower()
    if key == "crop_mode" and word in REJECTED_CROP_MODES:
        raise DataError(f"--extension: {REJECTED_CROP_MODES[word]}")
    if word not in kind:
        raise DataError(f"--extension: {key}={value!r} must be one of {', '.join(kind)}")
    return word


def _canonical_key(key, fmt):
    key = key.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in REJECTED:
        raise DataError(f"--extension: {key}: {REJECTED[key]}")
    if key not in KEYS:
        hint = difflib.get_close_matches(key, list(KEYS) + list(ALIASES), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DataError(f"--extension: unknown key {key!r}{extra}; see docs/datasets.md")
    applies = KEYS[key][1]
    if applies is not None and fmt not in applies:
        raise DataError(f"--extension: {key} applies only to {', '.join(applies)}, not {fmt}")
    return key


def parse_extension(text: str, overrides: dict | None = None) -> Extension:
    """Parse ``FORMAT,SUBSET,key=value,flag,...`` and apply keyword ``overrides`` on top.

    Returns an ``Extension`` whose ``options`` hold every key of ``KEYS`` (defaults filled in).
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            "--extension is empty; give a format such as png, npy, imagenet, mscoco, voc or seglist"
        )
    tokens = [t.strip() for t in text.split(",")]
    head = tokens[0].lower()
    image_ext = None
    if head in FORMATS and head != "dir":
        fmt = head
    elif head == "npz":
        raise DataError(
            "--extension npz is not supported; save FNAME_data.npy and "
            "FNAME_labels.npy and use --extension npy"
        )
    elif re.fullmatch(r"\.?[a-z0-9]+", head):
        close = difflib.get_close_matches(head, FORMATS[1:], n=1, cutoff=0.75)
        if head.lstrip(".") not in IMAGE_EXTENSIONS and close:
            raise DataError(
                f"--extension: unknown format {tokens[0]!r} (did you mean {close[0]!r}?)"
            )
        fmt, image_ext = "dir", tokens[0].lstrip(".")
    else:
        raise DataError(
            f"--extension: {tokens[0]!r} is neither a format (npy, imagenet, mscoco,"
            " voc, seglist) nor an image file extension"
        )

    options = dict(_COMMON_DEFAULTS)
    options.update(FORMAT_DEFAULTS[fmt])
    subsets = []
    given = set()
    for token in tokens[1:]:
        if not token:
            continue
        if "=" in token:
            key, value = token.split("=", 1)
            key = _canonical_key(key, fmt)
            options[key] = _convert(key, value)
            given.add(key)
            continue
        if fmt in _SUBSET_RE and _SUBSET_RE[fmt].match(token.lower()):
            subsets.append(token.lower())
            continue
        key = _canonical_key(token, fmt)
        if KEYS[key][0] != "bool":
            raise DataError(f"--extension: {key} needs a value ({key}=...)")
        options[key] = True
        given.add(key)
    for key, value in (overrides or {}).items():
        if value is None:
            continue  # an unset command-line option leaves the extension's value alone
        key = _canonical_key(key, fmt)
        options[key] = _convert(key, value)
        given.add(key)
    if fmt == "voc" and options["seg"]:
        options.update({k: v for k, v in VOC_SEG_DEFAULTS.items() if k not in given})
    if options["channels"] not in (None, 1, 3) and fmt != "npy":
        raise DataError(f"--extension: channels={options['channels']} must be 1 or 3")
    if options["check_onscreen"] is not None and not 0.0 <= options["check_onscreen"] <= 1.0:
        raise DataError("--extension: check_onscreen must lie in [0, 1]")
    if not 0.0 < options["area_min"] <= 1.0:
        raise DataError("--extension: area_min must lie in (0, 1]")
    if not 0.0 < options["aspect_factor"] <= 1.0:
        raise DataError("--extension: aspect_factor must lie in (0, 1]")
    if options["random_scale"] and options["random_scale"] < 1.0:
        raise DataError("--extension: random_scale=S draws a ratio in [1/S, S]; S must be >= 1")
    if options["random_rotate"] < 0:
        raise DataError("--extension: random_rotate must be >= 0 degrees")
    if options["max_trials"] < 1:
        raise DataError("--extension: max_trials must be >= 1")
    return Extension(fmt, tuple(subsets), options, image_ext)
